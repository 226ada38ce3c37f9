//! Delivering secret variables without putting them in the container's configuration.
//!
//! A container's `Env` (and an exec's) is part of its configuration: `docker inspect` shows
//! it, the daemon writes it to disk (`config.v2.json`), and a kept sandbox keeps showing it.
//! So a run with secrets does not put them there. Instead:
//!
//! 1. the run container's `Cmd` is `/bin/sh -c LAUNCHER crownest-secrets ARGV...`, with
//!    `OpenStdin` (the plain `env` stays in `Env`, as for every run);
//! 2. the engine attaches to its stdin before start and, once started, writes one frame:
//!    a line `NAME \ooo\ooo...` per secret (every byte of the value as a three-digit octal
//!    escape, so any value travels as one line of ASCII) and an empty line;
//! 3. the [`LAUNCHER`] (POSIX `sh`, nothing else from the image) reads the frame, exports
//!    each variable (decoded by `printf`), points stdin at `/dev/null` and `exec`s ARGV,
//!    which keeps the launcher's pid, so signals and the exit status are the command's own.
//!
//! The values cross only the API socket and the container's stdin pipe, which nothing
//! logs (the log driver is `none`). They are in the command's environment, as asked, so
//! `/proc/<pid>/environ` of the running command shows them to root on the host, as for any
//! process. A launcher that does not receive the whole frame exits 125 without starting
//! the command. Runs without secrets keep `Cmd` = argv exactly.
//!
//! The launcher's own variables are named `_crownest_*`; a secret with that prefix is
//! refused (it would be overwritten while the frame is read).

use std::collections::BTreeMap;

use crownest_core::SecretValue;

/// The launcher script (see the module docs). `$0` is `crownest-secrets`; `"$@"` is argv.
pub(crate) const LAUNCHER: &str = r#"_crownest_ok=
while IFS=' ' read -r _crownest_n _crownest_v; do
  if [ -z "$_crownest_n" ]; then _crownest_ok=1; break; fi
  _crownest_v=$(printf "$_crownest_v"; printf x)
  export "$_crownest_n=${_crownest_v%x}"
done
if [ -z "$_crownest_ok" ]; then
  echo "crownest: the secret variables were not delivered; the command was not started" >&2
  exit 125
fi
unset _crownest_ok _crownest_n _crownest_v
exec "$@" </dev/null
"#;

/// The prefix of the launcher's own shell variables.
const RESERVED_PREFIX: &str = "_crownest_";

/// `Cmd` of a run container that receives secrets: the launcher, then argv.
pub(crate) fn launcher_cmd(argv: &[String]) -> Vec<String> {
    let mut cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        LAUNCHER.to_owned(),
        "crownest-secrets".to_owned(),
    ];
    cmd.extend(argv.iter().cloned());
    cmd
}

/// The frame written to the launcher's stdin, or why these secrets cannot be delivered
/// (a message naming the variable, never its value).
pub(crate) fn frame(secrets: &BTreeMap<String, SecretValue>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (name, value) in secrets {
        if !crownest_core::secret::is_portable_name(name) || name.starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "secret {name:?} cannot be passed by the docker backend (names are \
                 [A-Za-z_][A-Za-z0-9_]* and do not start with {RESERVED_PREFIX})"
            ));
        }
        if value.expose().contains('\0') {
            return Err(format!("the value of secret {name:?} contains NUL"));
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        for b in value.expose().bytes() {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::new(*v)))
            .collect()
    }

    #[test]
    fn the_frame_is_one_ascii_line_per_secret() {
        let f = frame(&secrets(&[("A", "x\n"), ("B", "")])).unwrap();
        assert_eq!(f, b"A \\170\\012\nB \n\n");
        assert!(frame(&secrets(&[("_crownest_v", "x")])).is_err());
        assert!(frame(&secrets(&[("A-B", "x")])).is_err());
    }

    /// Runs the launcher with the host's `/bin/sh` (the same POSIX script the image's runs).
    fn launch(frame: &[u8], argv: &[&str]) -> std::process::Output {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(LAUNCHER)
            .arg("crownest-secrets")
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PLAIN", "kept")
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
    fn the_launcher_exports_every_value_exactly_and_execs_argv() {
        let tricky = [
            ("TOKEN", "s3cr3t"),
            ("MULTI", "line one\nline two\n\n"),
            ("QUOTES", "it's \"q\" $(id) `id` $HOME \\ % %s \\n"),
            ("UNICODE", "päss ✓ 🚀"),
            ("EMPTY", ""),
            ("SPACES", "  lead and trail  "),
            ("v", "named like a shell variable"),
        ];
        let f = frame(&secrets(&tricky)).unwrap();
        let script = "import os, json, sys; print(json.dumps({k: os.environ.get(k) for k in sys.argv[1:]})); print(len(sys.stdin.read()))";
        let mut argv = vec!["python3", "-c", script];
        argv.extend(tricky.iter().map(|(k, _)| *k));
        argv.extend(["PLAIN", "_crownest_ok", "_crownest_n", "_crownest_v"]);
        let out = launch(&f, &argv);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let got: BTreeMap<String, Option<String>> =
            serde_json::from_str(lines.next().unwrap()).unwrap();
        for (k, v) in tricky {
            assert_eq!(got[k].as_deref(), Some(v), "{k}");
        }
        assert_eq!(got["PLAIN"].as_deref(), Some("kept"));
        for internal in ["_crownest_ok", "_crownest_n", "_crownest_v"] {
            assert_eq!(
                got[internal], None,
                "{internal} leaked into the environment"
            );
        }
        assert_eq!(lines.next(), Some("0"), "the command's stdin is /dev/null");
    }

    #[test]
    fn an_incomplete_frame_never_starts_the_command() {
        let out = launch(b"TOKEN \\163", &["sh", "-c", "echo started"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not delivered"));
    }
}
