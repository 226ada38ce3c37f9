//! Spawning a sandbox's command: its environment, the child hook for the containment in
//! force, the cgroup, and the one re-probe and retry after a spawn failure the containment
//! may have caused.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Arc;

use crownest_core::{ExecRequest, Network};

use crate::cgroup::Cgroup;
use crate::containment::{Applied, Init, Tree};
use crate::leader::{Leader, SharedLeader};
use crate::report::{Reports, read_available};
use crate::sandbox::ProcessSandbox;
use crate::spawn::{ChildHook, ExecImage, HookMode};
use crate::workspace;

/// Why a spawn failed.
pub(crate) struct SpawnError {
    message: String,
    /// The failure may come from the containment (the child hook or the cgroup), not from
    /// the request (program, cwd).
    containment: bool,
}

impl SpawnError {
    fn request(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            containment: false,
        }
    }
}

impl ProcessSandbox {
    fn hook_mode_for(&self, applied: &Applied) -> HookMode {
        match applied.clone() {
            Applied::PidNamespace { user, network } => HookMode::Namespace {
                user,
                network: network && self.spec.network == Network::None,
            },
            Applied::Cgroup { .. } => HookMode::Cgroup,
            Applied::ProcessGroup => HookMode::ProcessGroup,
        }
    }

    fn env(&self, request: &ExecRequest) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        // The template's `PATH` (recorded in its identity when it was resolved).
        let path = self
            .identity
            .facts
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| self.backend.config.path.clone());
        env.insert("PATH".to_owned(), path);
        env.insert(
            "HOME".to_owned(),
            self.host.join("workspace").display().to_string(),
        );
        env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        env.insert(
            "TMPDIR".to_owned(),
            self.host.join("tmp").display().to_string(),
        );
        // Plain settings and secrets alike: this backend hands the command its environment
        // directly and records neither anywhere.
        env.extend(request.command_env());
        env
    }

    /// Spawns the command. When that fails in a way the containment may cause and the
    /// containment came from the probe cache, the backend re-probes once and the spawn is
    /// retried with the new result (reported in the isolation details). `Err(message)` is a
    /// spawn failure.
    pub(crate) async fn spawn_with_fallback(
        &self,
        request: &ExecRequest,
    ) -> std::result::Result<(Leader, Arc<Tree>, Option<OwnedFd>, Reports), String> {
        let used = self.probe();
        let first = match self.spawn(request, &used.applied).await {
            Ok(s) => return Ok(s),
            Err(e) if !e.containment => return Err(e.message),
            Err(e) => e.message,
        };
        let Some((fresh, note)) = self.backend.reprobe_after(&used, &first).await else {
            return Err(first);
        };
        {
            let mut st = self.state();
            st.probe = fresh.clone();
            st.reprobe_note = Some(note);
        }
        self.spawn(request, &fresh.applied)
            .await
            .map_err(|e| format!("{first}; after re-probing the containment: {}", e.message))
    }

    /// Spawns the command under `applied`.
    async fn spawn(
        &self,
        request: &ExecRequest,
        applied: &Applied,
    ) -> std::result::Result<(Leader, Arc<Tree>, Option<OwnedFd>, Reports), SpawnError> {
        let argv0 = request
            .argv
            .first()
            .ok_or_else(|| SpawnError::request("empty argv"))?;
        let (cwd_fd, cwd_path) =
            workspace::open_cwd(&self.workspace(), &request.cwd).map_err(SpawnError::request)?;
        let env = self.env(request);
        let path_var = env.get("PATH").map_or("", String::as_str);
        let program =
            workspace::resolve_program(argv0, path_var, &cwd_path).map_err(SpawnError::request)?;
        let mode = self.hook_mode_for(applied);
        let (report_r, report_w) = match mode {
            HookMode::Namespace { .. } => {
                let (r, w) = rustix::pipe::pipe_with(
                    rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
                )
                .map_err(|e| {
                    SpawnError::request(format!("creating the report pipe failed: {e}"))
                })?;
                (Some(r), Some(w))
            }
            _ => (None, None),
        };
        let cgroup = match applied {
            Applied::Cgroup { parent } => {
                let n = self.state().execs;
                Some(
                    Cgroup::create(parent, &format!("{}-{n}", self.id)).map_err(|e| {
                        SpawnError {
                            message: format!(
                                "creating the cgroup under {} failed: {e}",
                                parent.display()
                            ),
                            containment: true,
                        }
                    })?,
                )
            }
            _ => None,
        };
        let procs = cgroup.as_ref().and_then(|c| {
            std::ffi::CString::new(c.procs_file().as_os_str().as_encoded_bytes()).ok()
        });
        // In a PID namespace the command's process execs it itself (`spawn.rs`); elsewhere
        // std's exec does.
        let image = match mode {
            HookMode::Namespace { .. } => Some(
                ExecImage::new(&program, &request.argv, &env).ok_or_else(|| {
                    SpawnError::request("an argument or environment value holds a NUL byte")
                })?,
            ),
            _ => None,
        };
        // Held until the spawn returned (the child joins it: `crate::netns`).
        let netns = if mode.joins_spare_netns() {
            self.backend.netns.take()
        } else {
            None
        };
        let hook = ChildHook::new(
            mode,
            cwd_fd.as_raw_fd(),
            report_w.as_ref().map_or(-1, |w| w.as_raw_fd()),
            self.rlimits(),
            procs,
            false,
            image,
        )
        .with_netns(netns.as_ref().map_or(-1, |fd| fd.as_raw_fd()));
        let privilege = hook.privilege();
        // C shares the host's memory where it can (`crate::leader`), else it is std's fork.
        let shared = matches!(mode, HookMode::Namespace { user: false, .. })
            && hook.stacks().is_some()
            && crate::leader::available();
        // The descriptors the hook names, open until the child has its copies.
        let hook_fds: Vec<OwnedFd> = [Some(cwd_fd), report_w, netns]
            .into_iter()
            .flatten()
            .collect();
        let spawned = if shared {
            // The spawn owns them: a canceled spawn cannot close them under C.
            SharedLeader::spawn(hook, hook_fds)
                .await
                .map(Leader::Shared)
        } else {
            let mut cmd = tokio::process::Command::new(&program);
            cmd.arg0(argv0)
                .args(&request.argv[1..])
                .env_clear()
                .envs(&env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            // SAFETY: the hook makes only async-signal-safe calls on data computed above.
            unsafe {
                cmd.pre_exec(move || hook.run());
            }
            let spawned = cmd.spawn().map(Leader::Forked);
            drop(hook_fds);
            spawned
        };
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                return Err(SpawnError {
                    message: format!("starting {argv0:?} ({}) failed: {e}", program.display()),
                    // The child hook (namespaces, cgroup, rlimits) or the exec itself.
                    containment: true,
                });
            }
        };
        self.state().privilege = Some(privilege);
        let leader = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let mut reports = Reports::default();
        if let Some(r) = &report_r {
            reports.parse(&read_available(r));
        }
        // C could not set up the containment (what std's spawn returns as an error for a
        // forked C), or the command's process could not exec (std's exec-error pipe saw
        // only EOF: the exec was H's own). Dropping the leader kills and reaps what is left.
        if let Some(errno) = reports.setup_error.or(reports.exec_error) {
            drop(child);
            if let Some(cg) = &cgroup {
                let _ = cg.remove();
            }
            return Err(SpawnError {
                message: format!(
                    "starting {argv0:?} ({}) failed: {}",
                    program.display(),
                    std::io::Error::from_raw_os_error(errno)
                ),
                containment: true,
            });
        }
        let init = reports.init_pid.and_then(|pid| Init::open(pid, leader));
        let tree = Arc::new(Tree::new(applied.clone(), leader, init, cgroup));
        Ok((child, tree, report_r, reports))
    }
}
