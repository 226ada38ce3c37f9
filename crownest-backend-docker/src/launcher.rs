//! The launcher: how one command reaches a container that was created (and started)
//! before the command was known.
//!
//! A container's `Cmd`, `Env` and `WorkingDir` are fixed at creation, and a sandbox's
//! container is created at `create()` (or long before, in the warm pool), so they cannot
//! carry the command. Every sandbox container runs the same [`LAUNCHER`] instead (POSIX
//! `sh`, nothing else from the image), under docker-init, with `OpenStdin`:
//!
//! 1. it waits on stdin for one frame: a line `D <cwd>`, a line `E NAME <value>` per
//!    variable (the plain `env` and the secrets alike), a line `A <arg>` per argv element,
//!    and an empty line; every byte of a cwd, value or arg is a three-digit octal escape,
//!    so any value travels as one line of ASCII;
//! 2. the engine attaches to the container (stdin, stdout, stderr) and writes the frame;
//! 3. the launcher changes to the cwd, exports each variable (decoded by `printf`), points
//!    stdin at `/dev/null` and `exec`s argv, which keeps the launcher's pid, so signals and
//!    the exit status are the command's own; the command's environment is exactly the
//!    template's (`PATH`, `HOME`, `LANG`, and Docker's `HOSTNAME`) plus the frame's
//!    variables (the shell's own `PWD`/`OLDPWD` are unset).
//!
//! So nothing of the request is in the container's configuration: `docker inspect`, the
//! daemon's `config.v2.json` and a kept sandbox show the launcher and the template
//! variables only. Secret values cross only the API socket and the container's stdin
//! pipe, which nothing logs (the log driver is `none`); `/proc/<pid>/environ` of the
//! running command shows them to root on the host, as for any process.
//!
//! A launcher that does not receive a whole frame exits 125 without starting anything; an
//! `exec` that fails (the pre-flight check normally catches an unknown program before)
//! exits 126/127 with a message starting with [`NAME`], which `exec.rs` reports as
//! `spawn_failed`. The launcher's own variables are named `_crownest_*`; a variable with
//! that prefix is refused (it would be overwritten while the frame is read).

use std::collections::BTreeMap;

use crownest_core::SecretValue;

/// `$0` of the launcher: `dash` prefixes its own error messages with it.
pub(crate) const NAME: &str = "crownest-launcher";

/// The launcher script (see the module docs).
pub(crate) const LAUNCHER: &str = r#"unset PWD OLDPWD
_crownest_ok=
set --
while IFS=' ' read -r _crownest_k _crownest_n _crownest_v; do
  case $_crownest_k in
    '') _crownest_ok=1; break ;;
    D) _crownest_n=$(printf "$_crownest_n"; printf x)
       cd "${_crownest_n%x}" || exit 127
       unset PWD OLDPWD ;;
    E) _crownest_v=$(printf "$_crownest_v"; printf x)
       export "$_crownest_n=${_crownest_v%x}" ;;
    A) _crownest_n=$(printf "$_crownest_n"; printf x)
       set -- "$@" "${_crownest_n%x}" ;;
  esac
done
if [ -z "$_crownest_ok" ] || [ "$#" -eq 0 ]; then
  echo "crownest: the command was not delivered; nothing was started" >&2
  exit 125
fi
unset _crownest_ok _crownest_k _crownest_n _crownest_v
exec "$@" </dev/null
"#;

/// The prefix of the launcher's own shell variables.
const RESERVED_PREFIX: &str = "_crownest_";

/// `Cmd` of every sandbox container: the launcher.
pub(crate) fn cmd() -> Vec<String> {
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        LAUNCHER.to_owned(),
        NAME.to_owned(),
    ]
}

fn escaped(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        out.extend_from_slice(format!("\\{b:03o}").as_bytes());
    }
}

/// What one frame carries.
pub(crate) struct Command<'a> {
    /// Absolute working directory in the container.
    pub(crate) cwd: &'a str,
    /// Plain variables (already merged over nothing: the template's come from `Env`).
    pub(crate) env: &'a BTreeMap<String, String>,
    /// Secret variables.
    pub(crate) secrets: &'a BTreeMap<String, SecretValue>,
    /// The argv (non-empty).
    pub(crate) argv: &'a [String],
}

/// The frame written to the launcher's stdin, or why this command cannot be delivered (a
/// message naming the variable, never its value).
pub(crate) fn frame(command: &Command<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.extend_from_slice(b"D ");
    if command.cwd.contains('\0') {
        return Err("the working directory contains NUL".into());
    }
    escaped(&mut out, command.cwd);
    out.push(b'\n');
    let plain = command.env.iter().map(|(k, v)| (k, v.as_str(), false));
    let secret = command.secrets.iter().map(|(k, v)| (k, v.expose(), true));
    for (name, value, is_secret) in plain.chain(secret) {
        let kind = if is_secret { "secret" } else { "variable" };
        if !crownest_core::secret::is_portable_name(name) || name.starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "{kind} {name:?} cannot be passed by the docker backend (names are \
                 [A-Za-z_][A-Za-z0-9_]* and do not start with {RESERVED_PREFIX})"
            ));
        }
        if value.contains('\0') {
            return Err(format!("the value of {kind} {name:?} contains NUL"));
        }
        out.extend_from_slice(b"E ");
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        escaped(&mut out, value);
        out.push(b'\n');
    }
    for arg in command.argv {
        if arg.contains('\0') {
            return Err("an argument contains NUL".into());
        }
        out.extend_from_slice(b"A ");
        escaped(&mut out, arg);
        out.push(b'\n');
    }
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;
    use std::process::{Command as Process, Stdio};

    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::new(*v)))
            .collect()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn frame_of(
        cwd: &str,
        e: &BTreeMap<String, String>,
        s: &BTreeMap<String, SecretValue>,
        argv: &[&str],
    ) -> Vec<u8> {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        frame(&Command {
            cwd,
            env: e,
            secrets: s,
            argv: &argv,
        })
        .unwrap()
    }

    #[test]
    fn the_frame_is_one_ascii_line_per_item() {
        let f = frame_of(
            "/w",
            &env(&[("P", "p")]),
            &secrets(&[("A", "x\n"), ("B", "")]),
            &["t"],
        );
        assert_eq!(
            f,
            b"D \\057\\167\nE P \\160\nE A \\170\\012\nE B \nA \\164\n\n".to_vec()
        );
        let argv = vec!["t".to_owned()];
        for (e, s) in [
            (env(&[]), secrets(&[("_crownest_v", "x")])),
            (env(&[("A-B", "x")]), secrets(&[])),
            (env(&[("A", "x\0")]), secrets(&[])),
        ] {
            assert!(
                frame(&Command {
                    cwd: "/",
                    env: &e,
                    secrets: &s,
                    argv: &argv
                })
                .is_err()
            );
        }
    }

    /// Runs the launcher with the host's `/bin/sh` (the same POSIX script the image runs).
    fn launch(frame: &[u8]) -> std::process::Output {
        let mut child = Process::new("/bin/sh")
            .arg("-c")
            .arg(LAUNCHER)
            .arg(NAME)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TEMPLATE", "kept")
            // (Without it Python would add `LC_CTYPE` itself, PEP 538.)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(frame).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    #[test]
    fn the_launcher_sets_exactly_the_environment_cwd_and_argv() {
        let tricky = [
            ("TOKEN", "s3cr3t"),
            ("MULTI", "line one\nline two\n\n"),
            ("QUOTES", "it's \"q\" $(id) `id` $HOME \\ % %s \\n"),
            ("UNICODE", "päss ✓ 🚀"),
            ("EMPTY", ""),
            ("SPACES", "  lead and trail  "),
            ("v", "named like a shell variable"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("a dir 'q' ✓");
        std::fs::create_dir(&cwd).unwrap();
        let script = "import os, json, sys; print(json.dumps([dict(os.environ), os.getcwd(), sys.argv[1:]])); print(len(sys.stdin.read()))";
        let args = ["python3", "-c", script, "", " two words ", "$(id)", "\\n"];
        let f = frame_of(
            cwd.to_str().unwrap(),
            &env(&[("PLAIN", "p l"), ("PATH", "/usr/bin:/bin")]),
            &secrets(&tricky),
            &args,
        );
        let out = launch(&f);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let (got, dir_seen, argv): (BTreeMap<String, String>, String, Vec<String>) =
            serde_json::from_str(lines.next().unwrap()).unwrap();
        let mut want = env(&tricky);
        want.extend(env(&[
            ("PLAIN", "p l"),
            ("PATH", "/usr/bin:/bin"),
            ("TEMPLATE", "kept"),
            ("LANG", "C.UTF-8"),
        ]));
        assert_eq!(
            got, want,
            "exactly the template's and the frame's variables"
        );
        assert_eq!(dir_seen, cwd.to_str().unwrap());
        assert_eq!(argv, &args[3..]);
        assert_eq!(lines.next(), Some("0"), "the command's stdin is /dev/null");
    }

    #[test]
    fn an_incomplete_frame_never_starts_the_command() {
        let out = launch(b"D \\057\nA \\163\\150\nA \\055\\143");
        assert_eq!(out.status.code(), Some(125));
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not delivered"));
        let out = launch(b"D \\057\n\n");
        assert_eq!(out.status.code(), Some(125), "no argv");
    }

    #[test]
    fn a_failed_exec_is_named_by_the_launcher() {
        let out = launch(b"D \\057\nA \\156\\157\\160\\145\n\n");
        assert_eq!(out.status.code(), Some(127));
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with(NAME),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
