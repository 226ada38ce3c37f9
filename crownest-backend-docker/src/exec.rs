//! Running the command: program pre-flight, attach and hand the command to the launcher,
//! output pump with backpressure, wait, and the mapping of Docker's answer to an
//! [`ExitStatus`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, ContainerArchiveInfoOptionsBuilder, KillContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use crownest_core::event::OutputStream;
use crownest_core::{ExecSink, ExitStatus, KillSignal};
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::container::WORKSPACE;
use crate::error::{DockerError, is_not_found, status_of};
use crate::launcher::EndMark;
use crate::upload::WorkspaceIndex;

const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;

/// Stat results of image paths, by `image id \0 path` (images are immutable, so a
/// program found once is found forever; the workspace is never cached).
pub(crate) type StatCache = Mutex<HashMap<String, Option<u32>>>;

/// Where image paths are looked up: a created container of the image, and the cache.
#[derive(Clone, Copy)]
pub(crate) struct ImagePaths<'a> {
    pub(crate) docker: &'a Docker,
    pub(crate) container: &'a str,
    pub(crate) image_id: &'a str,
    pub(crate) cache: &'a StatCache,
    /// The backend's private work root, where the answers are kept per image id
    /// (`paths-<image id>.json`) for the next process; `None`: memory only.
    pub(crate) root: Option<&'a std::path::Path>,
}

/// The file in the work root that keeps `image_id`'s path lookups.
fn paths_file(root: &std::path::Path, image_id: &str) -> std::path::PathBuf {
    root.join(format!("paths-{}.json", image_id.replace(':', "-")))
}

/// Loads the kept lookups of `image_id` into the memory cache, once per process (the key
/// `<image id>\0` marks it done). An image id names its content, so a path's answer in
/// a fresh container of it never changes; a missing or unreadable file costs lookups only.
fn load_kept(image: &ImagePaths<'_>) {
    let done = format!("{}\0", image.image_id);
    let mut cache = image.cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.contains_key(&done) {
        return;
    }
    cache.insert(done, None);
    let Some(root) = image.root else { return };
    let kept = std::fs::read(paths_file(root, image.image_id))
        .ok()
        .and_then(|b| serde_json::from_slice::<HashMap<String, Option<u32>>>(&b).ok())
        .unwrap_or_default();
    for (path, mode) in kept {
        cache.insert(format!("{}\0{path}", image.image_id), mode);
    }
}

/// Writes every answer known for `image_id` to its file (best effort: temp file, then
/// rename; a concurrent writer's answers may be lost, which costs only lookups).
fn keep(image: &ImagePaths<'_>) {
    let Some(root) = image.root else { return };
    let prefix = format!("{}\0", image.image_id);
    let known: HashMap<String, Option<u32>> = image
        .cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&prefix)
                .filter(|p| !p.is_empty())
                .map(|p| (p.to_owned(), *v))
        })
        .collect();
    let Ok(json) = serde_json::to_vec(&known) else {
        return;
    };
    let file = paths_file(root, image.image_id);
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = file.with_extension(format!("tmp-{}-{n}", std::process::id()));
    if std::fs::write(&tmp, json).is_ok() && std::fs::rename(&tmp, &file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// What one lookup found.
enum Found {
    Program,
    NotExecutable,
    Missing,
}

fn classify(mode: Option<u32>) -> Found {
    match mode {
        None => Found::Missing,
        Some(m) if m & GO_MODE_DIR != 0 => Found::Missing,
        // A symlink is resolved by the kernel at exec time; the fallback below catches a
        // dangling one.
        Some(m) if m & GO_MODE_SYMLINK != 0 => Found::Program,
        Some(m) if m & 0o111 == 0 => Found::NotExecutable,
        Some(_) => Found::Program,
    }
}

/// Relative path inside the workspace of an absolute container path, when lexically inside.
fn workspace_rel(abs: &str) -> Option<String> {
    let rest = abs.strip_prefix(WORKSPACE)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let mut parts = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Checks that `argv[0]` names something executable, the way `execvp` searches `PATH`, so
/// an unknown program is `SpawnFailed` before anything starts. Workspace paths are looked
/// up in the index of what was uploaded; image paths are `stat`ed through Docker (cached).
pub(crate) async fn preflight(
    image: &ImagePaths<'_>,
    index: &WorkspaceIndex,
    argv0: &str,
    path_env: &str,
    cwd: &str,
) -> Result<Result<(), String>, DockerError> {
    if argv0.is_empty() {
        return Ok(Err("the program name is empty".into()));
    }
    let candidates: Vec<String> = if argv0.contains('/') {
        if argv0.starts_with('/') {
            vec![argv0.to_owned()]
        } else if cwd.is_empty() {
            vec![format!("{WORKSPACE}/{argv0}")]
        } else {
            vec![format!("{WORKSPACE}/{cwd}/{argv0}")]
        }
    } else {
        path_env
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
            .collect()
    };
    // Every candidate is looked up at once (one round trip to Docker instead of one per
    // `PATH` entry); the first in `PATH` order that is a program wins, as for `execvp`.
    // Image paths answered before (by this process or, through the work root, an earlier
    // one) cost nothing; new answers are written back once, after all of them.
    load_kept(image);
    let looked_up = futures::future::try_join_all(candidates.iter().map(|abs| async move {
        Ok::<_, DockerError>(match workspace_rel(abs) {
            Some(rel) => {
                let mode = if index.dirs.contains(&rel) {
                    Some(GO_MODE_DIR)
                } else {
                    match index.files.get(&rel) {
                        Some(Some(m)) => Some(*m),
                        Some(None) => Some(GO_MODE_SYMLINK),
                        None => None,
                    }
                };
                (mode, false)
            }
            None => stat_image_path(image, abs).await?,
        })
    }))
    .await?;
    if looked_up.iter().any(|(_, asked)| *asked) {
        keep(image);
    }
    let modes = looked_up.into_iter().map(|(mode, _)| mode);
    let mut denied = false;
    for mode in modes {
        match classify(mode) {
            Found::Program => return Ok(Ok(())),
            Found::NotExecutable => denied = true,
            Found::Missing => {}
        }
    }
    Ok(Err(if denied {
        format!("{argv0}: permission denied (not executable)")
    } else if argv0.contains('/') {
        format!("{argv0}: no such file")
    } else {
        format!("{argv0}: not found in PATH ({path_env})")
    }))
}

/// The mode of an image path (`None`: missing), and whether Docker had to be asked.
async fn stat_image_path(
    image: &ImagePaths<'_>,
    abs: &str,
) -> Result<(Option<u32>, bool), DockerError> {
    let ImagePaths {
        docker,
        container,
        image_id,
        cache,
        ..
    } = *image;
    let key = format!("{image_id}\0{abs}");
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok((*hit, false));
    }
    let opts = ContainerArchiveInfoOptionsBuilder::new().path(abs).build();
    let mode = match docker
        .get_container_archive_info(container, Some(opts))
        .await
    {
        Ok(stat) => Some(stat.file_mode),
        // 404: missing; 400 and friends: a path component is not a directory.
        Err(e) if is_not_found(&e) || status_of(&e).is_some_and(|s| s < 500) => None,
        Err(e) => return Err(DockerError::api("stat program")(e)),
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, mode);
    Ok((mode, true))
}

/// What the run of a started container observed.
pub(crate) struct Observed {
    /// Exit code from `wait`/`inspect`.
    pub(crate) code: i64,
    /// The kernel's OOM killer ended it.
    pub(crate) oom_killed: bool,
    /// The first bytes of stderr (to recognise the launcher's own exec failure).
    pub(crate) stderr_head: Vec<u8>,
    /// Docker reported the container not running after the command (what allows a
    /// background removal, see `DockerConfig::background_removal`).
    pub(crate) stopped: bool,
}

/// The result of handing the command over.
pub(crate) enum Started {
    /// Docker refused to run it.
    Refused(String),
    /// It ran to the end.
    Ran(Observed),
}

/// One command handed to a sandbox container's launcher.
pub(crate) struct Launch<'a> {
    pub(crate) docker: &'a Docker,
    /// The container (started, or its start in `starting`; its launcher waits on stdin).
    pub(crate) container: &'a str,
    /// The launcher's frame (see `launcher.rs`).
    pub(crate) frame: &'a [u8],
    /// The frame's end-mark nonce.
    pub(crate) nonce: &'a str,
    /// Set once the frame is written: from then on signals go to the container.
    pub(crate) started: &'a AtomicBool,
    /// A signal asked for while the frame was being written (delivered right after).
    pub(crate) requested: &'a Mutex<Option<KillSignal>>,
    /// The attachment made when the workspace was handed over, if it was (else `launch`
    /// attaches).
    pub(crate) attached: Option<AttachContainerResults>,
    /// The container's start, when it is still in flight: the frame is written first (the
    /// attachment was made before the start, so the launcher reads it as soon as it
    /// runs, while the daemon is still finishing the start), then the start is awaited
    /// before anything else (signals, the wait) may assume a running container.
    pub(crate) starting: Option<crate::container::Starting>,
}

/// Attaches to the container's stdin, stdout and stderr (streaming, no logs). `Ok(Err)`:
/// the container is not running (its launcher died: killed from outside, OOM at start).
pub(crate) async fn attach(
    docker: &Docker,
    container: &str,
) -> Result<Result<AttachContainerResults, String>, DockerError> {
    let opts = AttachContainerOptionsBuilder::new()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build();
    match docker.attach_container(container, Some(opts)).await {
        Ok(a) => Ok(Ok(a)),
        Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => Ok(Err(message)),
        Err(e) => Err(DockerError::api("attach")(e)),
    }
}

/// Attaches to the container unless the workspace hand-over did (stdin, stdout, stderr;
/// the launcher writes nothing of the command before its frame, so no byte of the
/// command's output can come before the attach), writes the
/// frame, calls `sink.started()`, pumps output into the sink (awaiting each chunk: the
/// backpressure) until both end marks are in, acknowledges them, then waits for the
/// container to stop and inspects it.
///
/// An attach stream that breaks (rather than ending), or ends without both marks, means
/// output may be missing: unless
/// this sandbox was killing the command (its run then ends `timed_out` or `canceled`,
/// whose output is cut by nature), that is an error, so the run fails `sandbox_error`
/// instead of recording a short output as if it were whole.
pub(crate) async fn launch_and_wait(
    launch: Launch<'_>,
    sink: &dyn ExecSink,
) -> Result<Started, DockerError> {
    let Launch {
        docker,
        container,
        frame,
        nonce,
        started,
        requested,
        attached,
        starting,
    } = launch;
    let attached = match attached {
        Some(a) => a,
        None => match attach(docker, container).await? {
            Ok(a) => a,
            // Not running: nothing was started.
            Err(message) => return Ok(Started::Refused(message)),
        },
    };
    let mut output = attached.output;
    let mut input = attached.input;
    // The launcher reads the whole frame before the command starts, and writes nothing
    // before, so this cannot wait on unread output. The write half stays open: it carries
    // the acknowledgement of the end marks (the command's stdin is `/dev/null`).
    let written = async {
        input.write_all(frame).await?;
        input.flush().await
    };
    written.await.map_err(|e| DockerError::Io {
        context: "writing the command to the launcher's stdin".into(),
        source: e,
    })?;
    if let Some(start) = starting {
        start.await.map_err(DockerError::State)?;
    }
    started.store(true, Ordering::SeqCst);
    // A signal asked for while the frame was being written would have found nothing
    // running: deliver it now.
    let pending = *requested.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(sig) = pending {
        let opts = KillContainerOptionsBuilder::new()
            .signal(sig.name())
            .build();
        if let Err(e) = docker.kill_container(container, Some(opts)).await
            && !is_not_found(&e)
            && status_of(&e) != Some(409)
        {
            return Err(DockerError::api("kill")(e));
        }
    }
    sink.started().await;
    // Output goes to the sink as it comes (awaiting each chunk: the backpressure reaches
    // the command through the daemon's pipes). The launcher writes its end mark on both
    // streams once the command has ended and exits only on the line acknowledging them,
    // so the container cannot exit, and the daemon cannot cut the stream ~2 s later, with
    // output of the command still unread (see `launcher.rs`).
    let killing = || {
        requested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    };
    let mut marks = [EndMark::new(nonce), EndMark::new(nonce)];
    let mut acknowledged = false;
    let mut stderr_head = Vec::new();
    let wait_opts = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    // Asked for as soon as the marks are acknowledged, while the rest of the stream (a
    // detached child's output) is read: the container's exit takes the daemon some 20 ms.
    let mut wait = None;
    let mut waited = None;
    loop {
        let item = match wait.as_mut() {
            Some(w) if waited.is_none() => tokio::select! {
                item = output.next() => item,
                first = futures::StreamExt::next(w) => {
                    waited = Some(first);
                    continue;
                }
            },
            _ => output.next().await,
        };
        let Some(item) = item else { break };
        match item {
            Ok(LogOutput::StdOut { message }) => {
                let out = marks[0].push(&message);
                if !out.is_empty() {
                    sink.output(OutputStream::Stdout, &out).await;
                }
            }
            Ok(LogOutput::StdErr { message }) => {
                let out = marks[1].push(&message);
                if stderr_head.len() < 256 {
                    let take = (256 - stderr_head.len()).min(out.len());
                    stderr_head.extend_from_slice(&out[..take]);
                }
                if !out.is_empty() {
                    sink.output(OutputStream::Stderr, &out).await;
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            // Without a TTY every frame has a header: bytes without one are the rest of a
            // frame cut short (the decoder hands them over at the end of the stream).
            Ok(LogOutput::Console { .. }) | Err(_) => {
                if !killing() {
                    return Err(DockerError::OutputBroken {
                        detail: match item {
                            Err(e) => e.to_string(),
                            _ => "the stream ended inside a frame".into(),
                        },
                    });
                }
                // Killed by this sandbox (or its container removed by the ladder): the
                // wait below tells how the command ended.
                tracing::debug!(container, "attach stream of a killed command ended early");
                break;
            }
        }
        if !acknowledged && marks.iter().all(EndMark::seen) {
            acknowledged = true;
            // Both marks are in: every byte the command wrote has arrived. Without the
            // acknowledgement the launcher would keep the container up and the wait below
            // would never end: a failed write is an error (the sandbox is then destroyed).
            let ack = async {
                input.write_all(b"\n").await?;
                input.flush().await
            };
            ack.await.map_err(|e| DockerError::Io {
                context: "acknowledging the launcher's end marks".into(),
                source: e,
            })?;
            wait = Some(Box::pin(
                docker.wait_container(container, Some(wait_opts.clone())),
            ));
        }
    }
    // Bytes held as a possible start of a mark that never came were output after all.
    for (mark, stream) in marks
        .iter_mut()
        .zip([OutputStream::Stdout, OutputStream::Stderr])
    {
        let rest = mark.finish();
        if !rest.is_empty() {
            sink.output(stream, &rest).await;
        }
    }
    // A clean end without both marks: the command's output may be cut (by the daemon, or
    // by someone killing the container behind this sandbox's back), and a launcher still
    // waiting for its acknowledgement would keep the container up. A command this sandbox
    // was killing, or that the OOM killer ended, has its output cut by nature.
    if let Some(missing) = ["stdout", "stderr"]
        .iter()
        .zip(&marks)
        .find_map(|(name, mark)| (!mark.seen()).then_some(*name))
        && !killing()
    {
        let state = docker
            .inspect_container(container, None)
            .await
            .map_err(DockerError::api("inspect"))?
            .state
            .unwrap_or_default();
        if state.running != Some(true) && state.oom_killed == Some(true) {
            return Ok(Started::Ran(Observed {
                code: state.exit_code.unwrap_or(-1),
                oom_killed: true,
                stderr_head,
                stopped: true,
            }));
        }
        return Err(DockerError::OutputBroken {
            detail: format!(
                "the {missing} stream ended without the launcher's end mark: the daemon may \
                 have dropped the tail of the output"
            ),
        });
    }
    let first = match (waited, wait.as_mut()) {
        (Some(first), _) => first,
        (None, Some(w)) => w.next().await,
        (None, None) => {
            Box::pin(docker.wait_container(container, Some(wait_opts)))
                .next()
                .await
        }
    };
    let waited = match first {
        Some(Ok(r)) => Some(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
        Some(Err(e)) => return Err(DockerError::api("wait")(e)),
        None => None,
    };
    // The wait (condition `not-running`) answering with a status is Docker reporting the
    // container stopped. A command that exited 0 succeeded whatever the OOM killer did to
    // one of its processes, so only another status needs the inspection (`OOMKilled`);
    // the common path saves that round trip.
    if waited == Some(0) {
        return Ok(Started::Ran(Observed {
            code: 0,
            oom_killed: false,
            stderr_head,
            stopped: true,
        }));
    }
    let inspect = docker
        .inspect_container(container, None)
        .await
        .map_err(DockerError::api("inspect"))?;
    let state = inspect.state.unwrap_or_default();
    let code = waited.or(state.exit_code).unwrap_or(-1);
    let oom_killed = state.oom_killed.unwrap_or(false);
    Ok(Started::Ran(Observed {
        code,
        oom_killed,
        stderr_head,
        stopped: state.running == Some(false),
    }))
}

/// Maps what Docker reported to an exit status.
///
/// * `OOMKilled` → `LimitExceeded` (memory).
/// * The launcher exits `128 + n` when the command died of signal `n`, which cannot be
///   told apart from `exit(128 + n)`; it is reported as `Signaled(n)` only when this sandbox
///   sent that signal, else as the plain exit code.
/// * 126/127 with the launcher's own message (it starts with `crownest-launcher:`; or
///   its shell's `exec: ...: not found`) → `SpawnFailed` (the pre-flight check normally
///   catches these before anything starts).
pub(crate) fn exit_status(
    observed: &Observed,
    sent: Option<KillSignal>,
    memory_bytes: u64,
) -> ExitStatus {
    if observed.oom_killed {
        return ExitStatus::LimitExceeded(format!(
            "out of memory: the container reached its {memory_bytes} byte memory limit and the kernel killed the command"
        ));
    }
    let code = i32::try_from(observed.code).unwrap_or(-1);
    if let Some(sig) = sent {
        let n = match sig {
            KillSignal::Term => 15,
            KillSignal::Kill => 9,
        };
        if code == 128 + n || (code == 137 && sig == KillSignal::Term) {
            return ExitStatus::Signaled(code - 128);
        }
    }
    let launcher = format!("{}: ", crate::launcher::NAME);
    if (code == 126 || code == 127) && observed.stderr_head.starts_with(launcher.as_bytes()) {
        let line = String::from_utf8_lossy(&observed.stderr_head);
        let line = line.lines().next().unwrap_or_default().to_owned();
        return ExitStatus::SpawnFailed(line);
    }
    ExitStatus::Exited(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(code: i64, oom: bool, head: &[u8]) -> Observed {
        Observed {
            code,
            oom_killed: oom,
            stderr_head: head.to_vec(),
            stopped: true,
        }
    }

    #[test]
    fn maps_docker_answers() {
        assert_eq!(
            exit_status(&obs(0, false, b""), None, 1),
            ExitStatus::Exited(0)
        );
        assert_eq!(
            exit_status(&obs(143, false, b""), None, 1),
            ExitStatus::Exited(143)
        );
        assert_eq!(
            exit_status(&obs(143, false, b""), Some(KillSignal::Term), 1),
            ExitStatus::Signaled(15)
        );
        assert_eq!(
            exit_status(&obs(137, false, b""), Some(KillSignal::Kill), 1),
            ExitStatus::Signaled(9)
        );
        assert!(matches!(
            exit_status(&obs(137, true, b""), None, 1),
            ExitStatus::LimitExceeded(_)
        ));
        assert!(matches!(
            exit_status(&obs(127, false, b"crownest-launcher: 17: exec: nope: not found\n"), None, 1),
            ExitStatus::SpawnFailed(m) if m.contains("nope: not found")
        ));
        assert_eq!(
            exit_status(&obs(127, false, b"sh: 1: x: not found\n"), None, 1),
            ExitStatus::Exited(127)
        );
    }

    #[test]
    fn workspace_paths_are_lexical() {
        assert_eq!(workspace_rel("/workspace/a/./b").as_deref(), Some("a/b"));
        assert_eq!(workspace_rel("/workspace").as_deref(), Some(""));
        assert_eq!(workspace_rel("/workspace/../etc/x"), None);
        assert_eq!(workspace_rel("/workspacex/a"), None);
    }
}
