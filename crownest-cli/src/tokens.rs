//! Tokens: where a command's bearer token comes from (`--token-file`, `$CROWNEST_TOKEN`,
//! or the discouraged `--token`), and `crownest token add | list` over a tokens file (the
//! format is [`crownest_http::tokens`]'s: JSON lines of name, sha256, scopes).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use crownest_http::{Scope, TokenEntry, TokenSet};

use crate::cli::{TokenAddArgs, TokenCommand, TokenListArgs};
use crate::exit::{Exit, usage};

/// The tokens file `serve` reads and `token add` writes when none is named.
pub(crate) fn default_file(home: &Path) -> PathBuf {
    home.join("tokens.jsonl")
}

/// The bearer token of this invocation: `--token` (discouraged: argv is visible to every
/// user), else the first line of `--token-file`, else `$CROWNEST_TOKEN`. Empty means none.
pub(crate) fn resolve(
    token: Option<String>,
    token_file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    if let Some(t) = token {
        return Ok(Some(t).filter(|t| !t.is_empty()));
    }
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?;
        let first = text.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            return Err(usage(format!(
                "--token-file {}: the file holds no token",
                path.display()
            )));
        }
        return Ok(Some(first.to_owned()));
    }
    Ok(std::env::var("CROWNEST_TOKEN")
        .ok()
        .filter(|t| !t.is_empty()))
}

/// Loads a tokens file: `Ok(None)` when `path` is the default and does not exist.
pub(crate) fn load(path: &Path, explicit: bool) -> anyhow::Result<Option<TokenSet>> {
    if !explicit && !path.exists() {
        return Ok(None);
    }
    TokenSet::load(path)
        .map(Some)
        .map_err(|e| usage(format!("tokens file {}: {e}", path.display())))
}

/// `crownest token add | list`.
pub(crate) fn token(home: &Path, command: TokenCommand) -> anyhow::Result<Exit> {
    match command {
        TokenCommand::Add(args) => add(home, args),
        TokenCommand::List(args) => list(home, args),
    }
}

fn add(home: &Path, args: TokenAddArgs) -> anyhow::Result<Exit> {
    let path = args.tokens.unwrap_or_else(|| default_file(home));
    let mut scopes = Vec::new();
    for s in &args.scopes {
        let s = s.trim();
        scopes.push(Scope::parse(s).ok_or_else(|| {
            usage(format!(
                "--scopes: unknown scope {s:?} (read, submit or admin)"
            ))
        })?);
    }
    let mut set = load(&path, false)?.unwrap_or_default();
    let (token, entry) = TokenEntry::mint(args.name, scopes);
    let line = entry.to_line();
    set.push(entry.clone()).map_err(usage)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?
    };
    // A file that does not end with a newline (edited by hand) gets one first.
    let needs_newline = std::fs::read(&path)
        .map(|b| b.last().is_some_and(|c| *c != b'\n'))
        .unwrap_or(false);
    let text = format!("{}{line}\n", if needs_newline { "\n" } else { "" });
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{token}");
    eprintln!(
        "crownest: added token {:?} ({}) to {}; it is shown only now, the file keeps its \
         sha256. A running serve reads the file at start: restart it.",
        entry.name,
        entry
            .scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        path.display()
    );
    Ok(Exit::Success)
}

fn list(home: &Path, args: TokenListArgs) -> anyhow::Result<Exit> {
    let explicit = args.tokens.is_some();
    let path = args.tokens.unwrap_or_else(|| default_file(home));
    let Some(set) = load(&path, explicit)? else {
        eprintln!("crownest: no tokens file at {}", path.display());
        return Ok(Exit::Success);
    };
    for e in set.entries() {
        println!(
            "{}\t{}",
            e.name,
            e.scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(Exit::Success)
}
