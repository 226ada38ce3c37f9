//! The command's cwd (opened without following symlinks) and program lookup. The sandbox
//! directory itself (`<root>/<run id>-<random>/{crownest-sandbox.json, tmp/, workspace/}`)
//! is a `crownest_core::hostdir::SandboxDir`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Opens the cwd `rel` inside `workspace`, one component at a time, never following a
/// symlink; every component must be a directory. Returns an `O_PATH` fd (for `fchdir`) and
/// the path.
pub(crate) fn open_cwd(workspace: &Path, rel: &str) -> Result<(OwnedFd, PathBuf), String> {
    let normalized =
        crownest_core::WorkspacePath::parse(rel).map_err(|e| format!("invalid cwd: {e}"))?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open(workspace, flags, Mode::empty()).map_err(|e| {
        format!(
            "the workspace {} cannot be opened: {e}",
            workspace.display()
        )
    })?;
    let mut path = workspace.to_path_buf();
    for comp in normalized.components() {
        fd = rustix::fs::openat(&fd, comp, flags, Mode::empty()).map_err(|e| {
            format!("cwd {rel:?} is not a directory inside the workspace ({comp:?}: {e})")
        })?;
        path.push(comp);
    }
    Ok((fd, path))
}

/// Resolves `program` the way `execvp` would, with `path_var` as `PATH` and `cwd` as the
/// working directory, to an executable regular file.
pub(crate) fn resolve_program(
    program: &str,
    path_var: &str,
    cwd: &Path,
) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("empty program name".into());
    }
    if program.contains('/') {
        let p = cwd.join(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!("program {program:?} not found or not executable"))
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let p = dir.join(program);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(format!(
        "program {program:?} not found on PATH {path_var:?}"
    ))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
        && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cwd_refuses_symlinks_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path();
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::write(ws.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("link")).unwrap();
        std::os::unix::fs::symlink("a", ws.join("rel")).unwrap();
        assert!(open_cwd(ws, ".").is_ok());
        assert_eq!(open_cwd(ws, "a/b").unwrap().1, ws.join("a/b"));
        assert!(open_cwd(ws, "file").is_err());
        assert!(open_cwd(ws, "link").is_err());
        assert!(open_cwd(ws, "rel/b").is_err());
        assert!(open_cwd(ws, "missing").is_err());
        assert!(open_cwd(ws, "../x").is_err());
    }

    #[test]
    fn programs_resolve_like_execvp() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_program("sh", "/usr/bin:/bin", tmp.path())
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert!(resolve_program("crownest-no-such", "/usr/bin:/bin", tmp.path()).is_err());
        let script = tmp.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(
            resolve_program("./run.sh", "", tmp.path()).is_err(),
            "not executable"
        );
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(
            resolve_program("./run.sh", "", tmp.path()).unwrap(),
            tmp.path().join("./run.sh")
        );
    }
}
