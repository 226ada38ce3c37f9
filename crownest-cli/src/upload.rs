//! The `run` source: a `.tar.gz` file, or a directory packed into a temporary one; and its
//! upload into a local engine: one stream, hashed once, by the engine's store
//! ([`WorkspaceRuns::receive_archive`]; a remote upload is the HTTP client's, which hashes
//! the file once before it declares it).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use crownest_core::store::ByteStream;
use crownest_core::{ArchiveDescriptor, Error, RunId, Sha256Digest, WorkspaceRuns};
use futures::StreamExt as _;
use indicatif::ProgressBar;

use crate::exit::usage;
use crate::pack;
use crate::progress::Progress;

/// An archive ready to upload.
#[derive(Debug)]
pub(crate) struct PreparedSource {
    /// The `.tar.gz` on disk.
    pub(crate) path: PathBuf,
    /// Its size.
    pub(crate) size_bytes: u64,
    /// What the upload declares: given with `--sha256/--size-bytes`, or computed while
    /// packing for a server; `None` lets the receiving side compute it (no pre-pass).
    pub(crate) declared: Option<ArchiveDescriptor>,
    /// Deletes a packed archive when dropped.
    _temp: Option<tempfile::TempPath>,
}

/// Packs a directory (leaving out what `ignore` says, and saying so on stderr) or takes a
/// file; the descriptor is the declared one if given. `remote`: the archive goes to a
/// server, so a packed one is hashed while it is written (the client declares it).
pub(crate) fn prepare(
    source: &Path,
    declared: Option<ArchiveDescriptor>,
    ignore: pack::Ignore,
    remote: bool,
    progress: &mut Progress,
) -> anyhow::Result<PreparedSource> {
    let meta = std::fs::metadata(source)
        .map_err(|e| usage(format!("source {}: {e}", source.display())))?;
    if meta.is_dir() {
        let tmp = tempfile::Builder::new()
            .prefix("crownest-pack-")
            .suffix(".tar.gz")
            .tempfile()
            .context("creating a temporary file for the packed directory")?;
        let (mut file, temp_path) = tmp.into_parts();
        progress.phase("packing", 0);
        let bar = progress.bar();
        let hash = remote && declared.is_none();
        let packed = pack::pack_dir(source, &mut file, ignore, hash, &mut |done, total| {
            if let Some(bar) = &bar {
                bar.set_length(total.max(1));
                bar.set_position(done);
            }
        })?;
        progress.finish();
        if let Some(note) = left_out_note(&packed.left_out) {
            crate::term::note!("crownest: {note}");
        }
        Ok(PreparedSource {
            path: temp_path.to_path_buf(),
            size_bytes: packed.size_bytes,
            declared: declared.or(packed.descriptor),
            _temp: Some(temp_path),
        })
    } else if meta.is_file() {
        Ok(PreparedSource {
            path: source.to_path_buf(),
            size_bytes: meta.len(),
            declared,
            _temp: None,
        })
    } else {
        Err(usage(format!(
            "source {} is neither a .tar.gz file nor a directory",
            source.display()
        )))
    }
}

/// "left out 3 paths (...): .git/, dist/, x.log" — at most ten named.
fn left_out_note(left_out: &[String]) -> Option<String> {
    const SHOWN: usize = 10;
    if left_out.is_empty() {
        return None;
    }
    let mut names = left_out
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if left_out.len() > SHOWN {
        names.push_str(&format!(" and {} more", left_out.len() - SHOWN));
    }
    let n = left_out.len();
    let paths = if n == 1 { "path" } else { "paths" };
    Some(format!(
        "left out {n} {paths} (.git, .gitignore, .crownestignore; --no-ignore packs everything): {names}"
    ))
}

/// Parses `--sha256 HEX --size-bytes N`.
pub(crate) fn declared(
    sha256: Option<&str>,
    size_bytes: Option<u64>,
) -> anyhow::Result<Option<ArchiveDescriptor>> {
    match (sha256, size_bytes) {
        (Some(hex), Some(size)) => {
            let sha256 = Sha256Digest::parse(&hex.to_ascii_lowercase())
                .map_err(|_| usage(format!("--sha256 {hex:?} is not 64 hex digits")))?;
            Ok(Some(ArchiveDescriptor {
                size_bytes: size,
                sha256,
            }))
        }
        _ => Ok(None),
    }
}

/// Uploads the archive for `run` into a local engine and starts the run: one stream of the
/// file, whatever its size (the engine's store hashes it, its extractor checks and prepares
/// the tree in the same pass; `archive_ready` and the start commit together,
/// [`WorkspaceRuns::receive_archive_and_start`]). Errors are the engine's (a rejection is
/// `Error::ArchiveRejected`, and nothing started), or I/O errors reading the file.
pub(crate) async fn upload_and_start(
    engine: &WorkspaceRuns,
    run: &RunId,
    source: &PreparedSource,
    bar: Option<ProgressBar>,
) -> Result<(), Error> {
    let file = tokio::fs::File::open(&source.path)
        .await
        .map_err(|e| Error::io(format!("opening {}", source.path.display()), e))?;
    // Reads of at most 256 KiB, a small archive's in one buffer of its own size (a larger
    // buffer is only pages faulted in and unmapped again).
    let capacity = usize::try_from(source.size_bytes)
        .unwrap_or(usize::MAX)
        .clamp(4096, 256 * 1024);
    let stream: ByteStream = tokio_util::io::ReaderStream::with_capacity(file, capacity)
        .inspect(move |chunk| {
            if let (Some(bar), Ok(bytes)) = (&bar, chunk) {
                bar.inc(bytes.len() as u64);
            }
        })
        .boxed();
    engine
        .receive_archive_and_start(run, source.declared.as_ref(), source.size_bytes, stream)
        .await?;
    Ok(())
}
