//! The status gate has one door: `lifecycle::advance`.
//!
//! **What this proves.** No source file of the workspace (every crate's `src/`, unit-test
//! modules aside) writes `RunRecord::status` except `crownest-core/src/lifecycle.rs`, where
//! [`advance`](crownest_core::lifecycle::advance) sets exactly what `transition(state,
//! input)` decides. "Writes" means an assignment (`x.status = …`), a mutable borrow of the
//! field (`&mut x.status`, which covers `mem::replace`/`swap`), or a `RunRecord { … }`
//! literal outside `run.rs` (where `RunRecord::new` gives every run its first state,
//! `awaiting_archive`). Its companion, `assert_well_formed` in `tests/engine.rs`, checks the
//! behaviour: every `status` event of every run there is an edge of the table, and names
//! the status before it.
//!
//! **Why a source scan and not a private field.** `RunRecord` is the public data type that
//! stores persist and load (serde), that hosts read (`record.status`, some 250 reads in
//! eight crates) and that store and CLI tests forge to set up a state. A private field with
//! a getter would not close the door (deserializing sets any status) and would make every
//! one of those readers change for a rule that concerns one writer: the engine. So the rule
//! is checked where it can be broken, in the sources, and the scanner is itself tested below
//! (it sees the write in `lifecycle.rs`, and it tells writes from comparisons).
//!
//! `RunRecord::status` is a `RunStatus`, so writing `Some(…)`/`None` to a `status` field (a
//! `RunQuery` filter) is not a run's status and is not reported.
//!
//! **Exempt:** `crownest-core/src/conformance/`: the store conformance suite forges records
//! (a terminal record, a changed record for a stale commit) to check that a store keeps
//! exactly what it is given; it is compiled only with the `conformance` feature and never
//! runs in the engine.

use std::path::{Path, PathBuf};

/// The one file allowed to write a status.
const GATE: &str = "crownest-core/src/lifecycle.rs";
/// Where a `RunRecord { … }` literal is allowed (the type and `RunRecord::new`).
const BIRTH: &str = "crownest-core/src/run.rs";
/// Test fixtures outside the engine (see the module docs).
const EXEMPT: &[&str] = &["crownest-core/src/conformance/"];

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The code of a file as the scan sees it: its lines without `//` comments, up to a
/// trailing `#[cfg(test)] mod …` (unit tests forge records like integration tests do).
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
                .is_some_and(|l| l.starts_with("mod ") || l.starts_with("pub(crate) mod "))
        {
            break;
        }
        out.push_str(line.find("//").map_or(line, |at| &line[..at]));
        out.push('\n');
    }
    out
}

/// The writes of a `status` field in `code`, with their 1-based line.
///
/// `RunRecord::status` is a `RunStatus`: an assignment of `Some(…)` / `None` is some other
/// `status` field (a query filter), not a run's status.
fn status_writes(code: &str) -> Vec<(usize, &'static str)> {
    let b = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(".status") {
        let start = from + at;
        let end = start + ".status".len();
        from = end;
        if b.get(end).copied().is_some_and(is_ident) {
            continue; // `.status_code`, `.statuses`
        }
        // `x.status = …` (not `==`, `=>`)
        let rest = code[end..].trim_start();
        if let Some(value) = rest.strip_prefix('=')
            && !value.starts_with('=')
            && !value.starts_with('>')
        {
            let value = value.trim_start();
            if !value.starts_with("Some(") && !value.starts_with("None") {
                found.push((line_of(start), "assignment"));
            }
            continue;
        }
        // `&mut x.status` (covers mem::replace / mem::swap / a `&mut RunStatus` handed on)
        let mut p = start;
        while p > 0 && (is_ident(b[p - 1]) || b[p - 1] == b'.') {
            p -= 1;
        }
        if code[..p].trim_end().ends_with("&mut") {
            found.push((line_of(start), "mutable borrow"));
        }
    }
    // A literal builds a record with any status it likes.
    let mut from = 0;
    while let Some(at) = code[from..].find("RunRecord {") {
        let start = from + at;
        from = start + 1;
        let before = code[..start].trim_end();
        let declares = ["struct", "impl", "for", "->", "enum"]
            .iter()
            .any(|k| before.ends_with(k));
        if !declares {
            found.push((line_of(start), "RunRecord literal"));
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `src/` of the workspace (core's own always; the siblings when the checkout has
/// them).
fn sources() -> (PathBuf, Vec<PathBuf>) {
    let core = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = core.parent().map(Path::to_path_buf).unwrap_or(core.clone());
    let mut files = Vec::new();
    rust_files(&core.join("src"), &mut files);
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let dir = entry.path();
            if dir != core && dir.join("Cargo.toml").is_file() {
                rust_files(&dir.join("src"), &mut files);
            }
        }
    }
    files.sort();
    (root, files)
}

#[test]
fn only_the_lifecycle_room_writes_a_run_status() {
    let (root, files) = sources();
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("crownest-core/src/engine/mod.rs")),
        "the scan sees the engine"
    );
    let mut at_the_gate = 0;
    let mut elsewhere = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/");
        if EXEMPT.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap_or_default());
        for (line, what) in status_writes(&code) {
            if rel == GATE || (rel == BIRTH && what == "RunRecord literal") {
                at_the_gate += usize::from(rel == GATE);
                continue;
            }
            let text = code.lines().nth(line - 1).unwrap_or_default().trim();
            elsewhere.push(format!("{rel}:{line}: {what}: {text}"));
        }
    }
    assert!(
        elsewhere.is_empty(),
        "a run's status changes only through lifecycle::advance (an Input through the \
         transition table); found other writers:\n{}",
        elsewhere.join("\n")
    );
    assert!(
        at_the_gate >= 1,
        "the scan must see the gate's own write in {GATE} (else it sees nothing)"
    );
}

#[test]
fn the_scan_tells_writes_from_reads() {
    for write in [
        "record.status = RunStatus::Failed;",
        "self.record.status=to;",
        "record.status =\n    transition(record.status, input)?;",
        "std::mem::replace(&mut record.status, s);",
        "let s = &mut self.record.status;",
        "let r = RunRecord { status: RunStatus::Running, ..old };",
    ] {
        assert_eq!(status_writes(write).len(), 1, "{write}");
    }
    for read in [
        "if record.status == RunStatus::Running {",
        "match run.status {",
        "let status = record.status;",
        "r.status_code = 3;",
        "query.status =\n    Some(RunStatus::parse(&value)?);",
        "query.status = None;",
        "pub struct RunRecord {",
        "impl RunRecord {",
        "fn f() -> RunRecord {",
    ] {
        assert!(status_writes(read).is_empty(), "{read}");
    }
    let code = code_of(
        "a.status = x; // b.status = y\n\nc.status = z;\n#[cfg(test)]\nmod tests {\nd.status = w;\n}",
    );
    assert_eq!(
        status_writes(&code),
        vec![(1, "assignment"), (3, "assignment")]
    );
}
