//! A host tree → tar stream straight into the sandbox container's workspace: handed to its
//! launcher over the attach stream ([`stream_to_launcher`]), or, when the image cannot
//! unpack it, through `PUT /containers/{id}/archive` ([`upload_tree`]).
//!
//! The staging tree was written by the core extractor into a private directory that only
//! this process writes, so walking it with `symlink_metadata` (never following a link) is
//! race-free. Every entry is sent owned by the sandbox user, hardlinks are sent as tar
//! hardlinks (never duplicated content), and the directories and files are indexed so
//! `exec` can check `cwd` and workspace programs without asking Docker.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::container::WORKSPACE;
use crate::error::DockerError;
use crate::launcher::WsReplies;

/// What the uploaded workspace holds (relative paths, `""` = the root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WorkspaceIndex {
    /// Real directories.
    pub(crate) dirs: BTreeSet<String>,
    /// Non-directories with their permission bits (symlinks have `None`).
    pub(crate) files: HashMap<String, Option<u32>>,
}

/// A `Write` that sends 256 KiB chunks into a bounded channel (the backpressure of the
/// upload: the walker blocks while Docker has not taken the previous chunks).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    chunk: usize,
}

/// Chunks of `PUT .../archive` bodies.
const CHUNK: usize = 256 * 1024;

/// Chunks handed to the launcher: each is one `dd` process in the container.
const LAUNCHER_CHUNK: usize = 1024 * 1024;

impl ChannelWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>, chunk: usize) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.chunk),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload was aborted"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Streams a tar of the host tree `dir` (a directory only this process writes: the
/// extractor's staging, or a tree extracted and validated at upload time) into the
/// workspace of `container`, every entry owned by `uid:gid`; returns the index of what was
/// sent. The tar is produced on a blocking thread while Docker reads it (256 KiB chunks,
/// bounded: the walk waits for Docker), so nothing is buffered whole.
pub(crate) async fn upload_tree(
    docker: &Docker,
    container: &str,
    dir: PathBuf,
    (uid, gid): (u64, u64),
) -> Result<WorkspaceIndex, DockerError> {
    let (walker, rx) = walk(dir, (uid, gid), CHUNK);
    let body = bollard::body_try_stream(stream_of(rx));
    let opts = UploadToContainerOptionsBuilder::new()
        .path(WORKSPACE)
        .no_overwrite_dir_non_dir("true")
        .build();
    let uploaded = docker
        .upload_to_container(container, Some(opts), body)
        .await;
    let index = walked(walker).await?;
    uploaded.map_err(DockerError::api("upload archive"))?;
    Ok(index)
}

/// What the walk of [`walk`] found, once it has ended.
async fn walked(
    walker: tokio::task::JoinHandle<io::Result<WorkspaceIndex>>,
) -> Result<WorkspaceIndex, DockerError> {
    walker
        .await
        .map_err(|e| DockerError::State(format!("the workspace walker failed: {e}")))?
        .map_err(|e| DockerError::Io {
            context: "reading the workspace tree".into(),
            source: e,
        })
}

/// The tar of `dir` produced on a blocking thread into a bounded channel of `chunk`-sized
/// pieces (an error of the walk is also sent, so the consumer stops).
fn walk(
    dir: PathBuf,
    (uid, gid): (u64, u64),
    chunk: usize,
) -> (
    tokio::task::JoinHandle<io::Result<WorkspaceIndex>>,
    mpsc::Receiver<io::Result<Bytes>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let walker = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone(), chunk);
        let r = write_tar(&dir, uid, gid, &mut out);
        if let Err(e) = &r {
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        r
    });
    (walker, rx)
}

/// The launcher's next workspace-mark word (see `launcher.rs`, step 0).
async fn next_word(
    output: &mut (impl futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin),
    replies: &mut WsReplies,
    pending: &mut std::collections::VecDeque<String>,
    nonce: &str,
) -> Result<String, DockerError> {
    loop {
        if let Some(word) = pending.pop_front() {
            return Ok(word);
        }
        let chunk = match output.next().await {
            Some(Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message })) => message,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(DockerError::api("attach (workspace)")(e)),
            None => {
                return Err(DockerError::WorkspaceTransfer {
                    detail: format!(
                        "the container's launcher ended before it answered: {}",
                        replies.text()
                    ),
                });
            }
        };
        pending.extend(replies.push(nonce, &chunk));
    }
}

/// Hands the tree `dir` to the launcher of an attached, started container (step 0 of
/// `launcher.rs`): `Ok(None)` when the launcher cannot take it (the caller then uses
/// [`upload_tree`]), else the index of what was unpacked. The tar goes out in 1 MiB
/// chunks while the launcher's answers are read, so neither side can wait on the other.
/// `offered`: the nonce of an offer written already (`container::offer`, before the
/// container started); else the offer is written here.
pub(crate) async fn stream_to_launcher(
    attached: &mut AttachContainerResults,
    offered: Option<String>,
    dir: PathBuf,
    owner: (u64, u64),
) -> Result<Option<WorkspaceIndex>, DockerError> {
    let AttachContainerResults { output, input } = attached;
    let io_err = |source| DockerError::Io {
        context: "writing the workspace to the launcher's stdin".into(),
        source,
    };
    // The tree is read while the launcher answers.
    let (walker, mut rx) = walk(dir, owner, LAUNCHER_CHUNK);
    let nonce = match offered {
        Some(nonce) => nonce,
        None => {
            let nonce = crate::launcher::new_nonce();
            let offer = async {
                input.write_all(format!("W {nonce}\n").as_bytes()).await?;
                input.flush().await
            };
            offer.await.map_err(io_err)?;
            nonce
        }
    };
    let mut replies = WsReplies::default();
    let mut pending = std::collections::VecDeque::new();
    match next_word(output, &mut replies, &mut pending, &nonce)
        .await?
        .as_str()
    {
        "ready" => {}
        "unsupported" => {
            drop(rx);
            // Ends at its next chunk (nobody takes it); the caller walks the tree again.
            let _ = walker.await;
            return Ok(None);
        }
        other => {
            return Err(DockerError::WorkspaceTransfer {
                detail: format!("the launcher answered {other:?} to the workspace offer"),
            });
        }
    }
    let send = async {
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            input
                .write_all(format!("C {}\n", chunk.len()).as_bytes())
                .await?;
            input.write_all(&chunk).await?;
        }
        input.write_all(b"C 0\n").await?;
        input.flush().await
    };
    let answers = async {
        let complete = next_word(output, &mut replies, &mut pending, &nonce).await?;
        let status = next_word(output, &mut replies, &mut pending, &nonce).await?;
        Ok::<_, DockerError>((complete, status, replies.text()))
    };
    let mut answers = std::pin::pin!(answers);
    // The launcher answers only after `C 0` (a failed `tar` still lets every chunk be
    // read): an answer before that is a launcher that ended.
    let sent = tokio::select! {
        biased;
        sent = send => sent,
        early = &mut answers => {
            return Err(early.err().unwrap_or_else(|| DockerError::WorkspaceTransfer {
                detail: "the launcher answered before the whole workspace was sent".into(),
            }));
        }
    };
    let index = walked(walker).await?;
    sent.map_err(io_err)?;
    let (complete, status, text) = answers.await?;
    if complete != "complete" || status != "0" {
        return Err(DockerError::WorkspaceTransfer {
            detail: format!("unpacking it in the container failed (status {status}): {text}"),
        });
    }
    Ok(Some(index))
}

/// Ends a workspace offer that no tree will follow (a command without `materialize`):
/// after `ready`, an empty archive (two zero blocks), so the launcher's `tar` succeeds
/// without touching the workspace and the launcher goes on to read its frame.
pub(crate) async fn settle_offer(
    attached: &mut AttachContainerResults,
    nonce: &str,
) -> Result<(), DockerError> {
    let AttachContainerResults { output, input } = attached;
    let mut replies = WsReplies::default();
    let mut pending = std::collections::VecDeque::new();
    match next_word(output, &mut replies, &mut pending, nonce)
        .await?
        .as_str()
    {
        "unsupported" => return Ok(()),
        "ready" => {}
        other => {
            return Err(DockerError::WorkspaceTransfer {
                detail: format!("the launcher answered {other:?} to the workspace offer"),
            });
        }
    }
    let empty = async {
        input.write_all(b"C 1024\n").await?;
        input.write_all(&[0u8; 1024]).await?;
        input.write_all(b"C 0\n").await?;
        input.flush().await
    };
    empty.await.map_err(|source| DockerError::Io {
        context: "ending the workspace offer".into(),
        source,
    })?;
    let complete = next_word(output, &mut replies, &mut pending, nonce).await?;
    let status = next_word(output, &mut replies, &mut pending, nonce).await?;
    if complete != "complete" || status != "0" {
        return Err(DockerError::WorkspaceTransfer {
            detail: format!(
                "ending the workspace offer failed (status {status}): {}",
                replies.text()
            ),
        });
    }
    Ok(())
}

/// A receiver as a `Stream` (without pulling in tokio-stream's wrappers).
fn stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// One entry of a staging tree, as [`walk_staging`] visits it.
pub(crate) struct StagedEntry {
    /// Its path relative to the root (`a/b`).
    pub(crate) rel: String,
    /// Its host path.
    pub(crate) path: PathBuf,
    /// Its own metadata (a link is not followed).
    pub(crate) meta: fs::Metadata,
}

/// Visits every entry below `root` (a staging tree only this process writes, so walking it
/// with `symlink_metadata` is race-free): each directory's entries by name, a directory
/// before what it holds; names that are not UTF-8 are an error (the extractor writes none).
pub(crate) fn walk_staging(
    root: &Path,
    mut visit: impl FnMut(StagedEntry) -> io::Result<()>,
) -> io::Result<()> {
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "non UTF-8 name in staging",
                ));
            };
            let child_rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            if meta.file_type().is_dir() {
                stack.push((path.clone(), child_rel.clone()));
            }
            visit(StagedEntry {
                rel: child_rel,
                path,
                meta,
            })?;
        }
    }
    Ok(())
}

/// Writes the tar of `root` (contents placed at the target dir, the root entry `./` owned by
/// `uid:gid`) into `out`, returning the index of what was sent.
fn write_tar(root: &Path, uid: u64, gid: u64, out: impl Write) -> io::Result<WorkspaceIndex> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut index = WorkspaceIndex::default();
    let mut seen_inodes: HashMap<(u64, u64), String> = HashMap::new();
    let meta = fs::symlink_metadata(root)?;
    let mut header = base_header(tar::EntryType::Directory, &meta, uid, gid);
    header.set_size(0);
    builder.append_data(&mut header, "./", io::empty())?;
    index.dirs.insert(String::new());

    walk_staging(root, |e| {
        let tar_name = format!("./{}", e.rel);
        let ft = e.meta.file_type();
        if ft.is_dir() {
            let mut h = base_header(tar::EntryType::Directory, &e.meta, uid, gid);
            h.set_size(0);
            builder.append_data(&mut h, &tar_name, io::empty())?;
            index.dirs.insert(e.rel);
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.path)?;
            let mut h = base_header(tar::EntryType::Symlink, &e.meta, uid, gid);
            h.set_size(0);
            builder.append_link(&mut h, &tar_name, &target)?;
            index.files.insert(e.rel, None);
        } else if ft.is_file() {
            let key = (e.meta.dev(), e.meta.ino());
            if e.meta.nlink() > 1
                && let Some(first) = seen_inodes.get(&key)
            {
                let mut h = base_header(tar::EntryType::Link, &e.meta, uid, gid);
                h.set_size(0);
                builder.append_link(&mut h, &tar_name, format!("./{first}"))?;
            } else {
                if e.meta.nlink() > 1 {
                    seen_inodes.insert(key, e.rel.clone());
                }
                let mut h = base_header(tar::EntryType::Regular, &e.meta, uid, gid);
                h.set_size(e.meta.len());
                let file = fs::File::open(&e.path)?;
                builder.append_data(&mut h, &tar_name, io::Read::take(file, e.meta.len()))?;
            }
            index.files.insert(e.rel, Some(e.meta.mode() & 0o777));
        }
        // Anything else cannot come out of the core extractor: not sent.
        Ok(())
    })?;
    builder.into_inner()?.flush()?;
    Ok(index)
}

fn base_header(kind: tar::EntryType, meta: &fs::Metadata, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_uid(uid);
    h.set_gid(gid);
    // setuid/setgid/sticky were stripped by the extractor; never send them anyway.
    h.set_mode(meta.mode() & 0o777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tar_carries_owner_links_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/a.txt"), b"aaa").unwrap();
        fs::hard_link(root.join("sub/a.txt"), root.join("b.txt")).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", root.join("link")).unwrap();
        let mut out = Vec::new();
        let index = write_tar(root, 10001, 10001, &mut out).unwrap();
        assert!(index.dirs.contains("") && index.dirs.contains("sub"));
        assert_eq!(index.files.get("link"), Some(&None));
        let mut ar = tar::Archive::new(&out[..]);
        let mut kinds = Vec::new();
        let mut content_bytes = 0;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 10001);
            assert_eq!(e.header().gid().unwrap(), 10001);
            content_bytes += e.header().size().unwrap();
            kinds.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            ));
        }
        // The hardlinked content is sent once.
        assert_eq!(content_bytes, 3);
        assert!(
            kinds.iter().any(|(_, k)| *k == tar::EntryType::Link),
            "{kinds:?}"
        );
        assert!(kinds.iter().any(|(p, k)| p.trim_start_matches("./") == "link" && *k == tar::EntryType::Symlink), "{kinds:?}");
        assert_eq!(
            kinds[0].1,
            tar::EntryType::Directory,
            "the root entry comes first: {kinds:?}"
        );
    }
}
