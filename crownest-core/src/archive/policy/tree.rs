//! The lexical model of the tree an archive builds ([`Tree`]): where an entry may be placed
//! (never through a symlink or a regular file, never changing a path's kind) and the two
//! budgets every node is charged to (entries and path bytes).

use std::collections::HashMap;

use super::Refusal;
use super::paths::NAME_MAX;
use crate::archive::ExtractPolicy;
use crate::error::RejectReason;

/// What a path of the archive holds, in the lexical model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::archive) enum Kind {
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

/// What placing an entry in the tree means for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::archive) enum Placement {
    /// A new path; the listed ancestor directories are implied and must be made first.
    New {
        /// Implied ancestors not seen before, top-down, as the byte length of their path
        /// within the entry path (the ancestor is `&path[..n]`).
        implied_dirs: Vec<usize>,
    },
    /// A directory seen before (explicitly or implied): only its mode changes.
    RepeatDir,
    /// A regular file replacing an earlier regular file or hardlink at the same path (the
    /// earlier one is unlinked first, as GNU tar does).
    ReplaceFile,
}

/// A node of the [`Tree`]: its id (the parent part of its children's keys) and its kind.
#[derive(Debug, Clone, Copy)]
struct Node {
    id: u64,
    kind: Kind,
}

/// The id of the extraction root, the parent of the top-level entries.
const ROOT: u64 = 0;

/// The lexical model of the tree the archive has built so far, and the two budgets every
/// node of it is charged to: entries and path bytes. Invariant: every ancestor of a node is
/// a [`Kind::Dir`] node.
///
/// A trie of path components: a node is keyed by its parent's id and its own component,
/// never by its whole path, so memory is O(nodes + component bytes) however deep the
/// paths are. Nodes are bounded by `max_entries` (implied directories count) and the
/// component bytes by `max_path_bytes`, so the model's memory is bounded by the limits.
#[derive(Debug)]
pub(in crate::archive) struct Tree {
    /// (parent id, component) → node. Key bytes: the parent id (8 bytes, little endian)
    /// followed by the component.
    edges: HashMap<Box<[u8]>, Node>,
    /// The last id handed out ([`ROOT`] is never handed out).
    last_id: u64,
    /// Entries so far: every entry of the archive (repeats included) and every directory
    /// implied by a deeper path.
    entries: u64,
    /// Bytes of the normalized paths of those entries.
    path_bytes: u64,
    max_entries: u64,
    max_path_bytes: u64,
}

/// The key of the edge from `parent` to its child `name`, built in `key`.
fn edge_key<'k>(key: &'k mut Vec<u8>, parent: u64, name: &str) -> &'k [u8] {
    key.clear();
    key.extend_from_slice(&parent.to_le_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

impl Tree {
    /// An empty tree (only the root) with the budgets of `policy`.
    pub(in crate::archive) fn new(policy: &ExtractPolicy) -> Self {
        Self {
            edges: HashMap::new(),
            last_id: ROOT,
            entries: 0,
            path_bytes: 0,
            max_entries: policy.max_entries,
            max_path_bytes: policy.max_path_bytes,
        }
    }

    /// Entries counted so far (implied directories included).
    pub(in crate::archive) fn entries(&self) -> u64 {
        self.entries
    }

    /// Counts one entry of the archive, before its path is looked at, refusing it over
    /// `max_entries` ([`RejectReason::TooManyEntries`]).
    pub(in crate::archive) fn count_entry(&mut self) -> Result<(), Refusal> {
        let entries = self.entries.saturating_add(1);
        if entries > self.max_entries {
            return Err((
                RejectReason::TooManyEntries,
                format!(
                    "more than {} entries (directories implied by deeper paths count as entries)",
                    self.max_entries
                ),
            ));
        }
        self.entries = entries;
        Ok(())
    }

    /// The kind at a normalized path, if any.
    pub(in crate::archive) fn get(&self, path: &str) -> Option<Kind> {
        let mut key = Vec::with_capacity(8 + NAME_MAX);
        let mut node = Node {
            id: ROOT,
            kind: Kind::Dir,
        };
        for name in path.split('/') {
            if node.kind != Kind::Dir {
                return None;
            }
            node = *self.edges.get(edge_key(&mut key, node.id, name))?;
        }
        Some(node.kind)
    }

    /// Places an entry of `kind` at the normalized, non-empty `path` (already counted by
    /// [`Tree::count_entry`]), refusing paths through symlinks
    /// ([`RejectReason::ThroughSymlink`]), paths through regular files and kind changes
    /// ([`RejectReason::DuplicateEntry`]), then the directories it implies over
    /// `max_entries` ([`RejectReason::TooManyEntries`]) and its path bytes, with those of
    /// the directories it implies, over `max_path_bytes`
    /// ([`RejectReason::TooManyPathBytes`]). A refused entry leaves the tree unchanged.
    pub(in crate::archive) fn place(
        &mut self,
        path: &str,
        kind: Kind,
    ) -> Result<Placement, Refusal> {
        let mut key = Vec::with_capacity(8 + NAME_MAX);
        // The deepest existing ancestor; once one is missing, every deeper one is too.
        let mut parent = ROOT;
        let mut implied: Vec<usize> = Vec::new();
        let mut start = 0;
        for (end, _) in path.match_indices('/') {
            if implied.is_empty() {
                match self
                    .edges
                    .get(edge_key(&mut key, parent, &path[start..end]))
                {
                    Some(Node {
                        id,
                        kind: Kind::Dir,
                    }) => parent = *id,
                    Some(Node {
                        kind: Kind::Symlink,
                        ..
                    }) => {
                        return Err((
                            RejectReason::ThroughSymlink,
                            format!("{:?} is a symlink earlier in the archive", &path[..end]),
                        ));
                    }
                    Some(Node { kind, .. }) => {
                        return Err((
                            RejectReason::DuplicateEntry,
                            format!(
                                "{:?} is a {} earlier in the archive",
                                &path[..end],
                                kind.name()
                            ),
                        ));
                    }
                    None => implied.push(end),
                }
            } else {
                implied.push(end);
            }
            start = end + 1;
        }
        let name = &path[start..];
        let existing = if implied.is_empty() {
            self.edges
                .get(edge_key(&mut key, parent, name))
                .map(|n| n.kind)
        } else {
            None
        };
        let placement = match (existing, kind) {
            (None, _) => Placement::New {
                implied_dirs: implied,
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
        let implied: &[usize] = match &placement {
            Placement::New { implied_dirs } => implied_dirs,
            _ => &[],
        };
        self.charge(path, implied)?;
        for &end in implied {
            let from = path[..end].rfind('/').map_or(0, |i| i + 1);
            parent = self.insert(parent, &path[from..end], Kind::Dir, &mut key);
        }
        self.insert(parent, name, kind, &mut key);
        Ok(placement)
    }

    /// Charges an entry at `path` and the directories it implies (prefixes of `path`) to
    /// the budgets.
    fn charge(&mut self, path: &str, implied: &[usize]) -> Result<(), Refusal> {
        let entries = self.entries.saturating_add(implied.len() as u64);
        if entries > self.max_entries {
            return Err((
                RejectReason::TooManyEntries,
                format!(
                    "the entry implies {} new directories, making {entries} entries, over the limit of {} (directories implied by deeper paths count as entries)",
                    implied.len(),
                    self.max_entries
                ),
            ));
        }
        let bytes = implied
            .iter()
            .fold(path.len() as u64, |sum, &n| sum.saturating_add(n as u64));
        let path_bytes = self.path_bytes.saturating_add(bytes);
        if path_bytes > self.max_path_bytes {
            return Err((
                RejectReason::TooManyPathBytes,
                format!(
                    "the entry paths add up to {path_bytes} bytes with this one ({bytes} bytes, the paths of the directories it implies included), over the limit of {}",
                    self.max_path_bytes
                ),
            ));
        }
        self.entries = entries;
        self.path_bytes = path_bytes;
        Ok(())
    }

    /// Sets the node `name` under `parent` to `kind` (a new node, or a new kind for an
    /// existing one) and returns its id.
    fn insert(&mut self, parent: u64, name: &str, kind: Kind, key: &mut Vec<u8>) -> u64 {
        if let Some(node) = self.edges.get_mut(edge_key(key, parent, name)) {
            node.kind = kind;
            return node.id;
        }
        self.last_id += 1;
        let id = self.last_id;
        self.edges.insert(key.as_slice().into(), Node { id, kind });
        id
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
    fn tree_rules() {
        let mut t = Tree::new(&p());
        assert_eq!(
            t.place("a/b/f", Kind::File).unwrap(),
            Placement::New {
                implied_dirs: vec![1, 3]
            }
        );
        assert_eq!(t.get("a"), Some(Kind::Dir));
        assert_eq!(t.get("a/b"), Some(Kind::Dir));
        assert_eq!(t.get("a/b/f"), Some(Kind::File));
        assert_eq!(t.get("b"), None);
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
        // A hardlink replaced by a regular file becomes a regular file.
        t.place("h", Kind::Hardlink).unwrap();
        assert_eq!(t.place("h", Kind::File).unwrap(), Placement::ReplaceFile);
        assert_eq!(t.get("h"), Some(Kind::File));
    }

    #[test]
    fn implied_directories_are_charged_like_entries() {
        let mut pol = p();
        pol.max_entries = 4;
        // "a", "a/b" and "a/b/c" would cost 1 + 3 + 5 bytes as entries; the file 7.
        pol.max_path_bytes = 16;
        let mut t = Tree::new(&pol);
        t.count_entry().unwrap();
        t.place("a/b/c/f", Kind::File).unwrap();
        assert_eq!(t.entries(), 4);
        // One more entry of any kind is over the entry limit, before its path is read.
        assert_eq!(t.count_entry().unwrap_err().0, RejectReason::TooManyEntries);

        let mut t = Tree::new(&pol);
        t.count_entry().unwrap();
        t.place("a/f", Kind::File).unwrap(); // 2 entries, 1 + 3 bytes
        t.count_entry().unwrap();
        // 2 more implied directories: 5 entries.
        assert_eq!(
            t.place("x/y/f", Kind::File).unwrap_err().0,
            RejectReason::TooManyEntries
        );
        // The refused entry left nothing behind.
        assert_eq!(t.get("x"), None);
        assert_eq!(t.entries(), 3);
        // A repeat costs its path bytes again.
        assert_eq!(t.path_bytes, 4);
        t.place("a/f", Kind::File).unwrap();
        assert_eq!(t.path_bytes, 7);
        let mut t2 = Tree::new(&pol);
        t2.count_entry().unwrap();
        t2.place("abcdefghijklmnop", Kind::File).unwrap();
        t2.count_entry().unwrap();
        assert_eq!(
            t2.place("q", Kind::File).unwrap_err().0,
            RejectReason::TooManyPathBytes
        );
    }

    #[test]
    fn tree_memory_does_not_grow_with_path_length() {
        // 64 levels of 60-byte components: each node keeps its own component only.
        let name = "c".repeat(60);
        let path = vec![name.as_str(); 64].join("/");
        let mut t = Tree::new(&p());
        t.count_entry().unwrap();
        t.place(&path, Kind::File).unwrap();
        let stored: usize = t.edges.keys().map(|k| k.len()).sum();
        assert_eq!(stored, 64 * (8 + 60));
        assert_eq!(t.path_bytes, (1..=64).map(|d| d * 61 - 1).sum::<u64>());
    }
}
