//! The launcher: how one command reaches a container that was created (and started)
//! before the command was known, and how its whole output is known to have arrived.
//!
//! A container's `Cmd`, `Env` and `WorkingDir` are fixed at creation, and a sandbox's
//! container is created at `create()` (or long before, in the warm pool), so they cannot
//! carry the command. Every sandbox container runs the same [`LAUNCHER`] instead (POSIX
//! `sh`; `tar` and `dd` from the image only for the workspace, see step 0) as the
//! container's pid 1 (no docker-init, see "Signals" below), with `OpenStdin`:
//!
//! 0. first, the engine may hand over the workspace on the same stdin (it is then attached
//!    already; `upload::stream_to_launcher`; not when it writes the workspace into the
//!    bound directory from the host, `place.rs`): a line `W <nonce>`. The launcher answers the
//!    [workspace mark](ws_mark) `ready` on stdout when its working directory (the
//!    workspace) is writable and the image has `tar` and `dd` (shell builtins check that:
//!    every program started in a fresh container costs ~10 ms on fuse-overlayfs), else
//!    `unsupported` (the engine then uses Docker's archive upload; nothing else changes).
//!    After `ready` the tar comes as chunks, each a line `C <n>` and `n` bytes, read by one
//!    `dd bs=<n> count=1 iflag=fullblock`, which never reads past its block, and piped into
//!    `tar -x -p` run as the sandbox user; `C 0` ends them. Both run with `LC_ALL=C`: in
//!    the template's `C.UTF-8` each loaded its locale files through the container's
//!    fuse-overlayfs, ~8 ms of a tiny run together (file names are bytes either way; GNU
//!    tar keeps a pax name it cannot convert as it is). The launcher writes the mark
//!    `complete` once it has read `C 0` and then the mark `<status of tar>`; anything
//!    `tar` printed comes before it. A status other than `0` ends the launcher (exit
//!    125, nothing started). A `dd` that fails (one without `iflag=fullblock`, or one
//!    killed by `SIGPIPE` after `tar` gave up) ends the chunk loop and sends the launcher
//!    `SIGTERM`, whose handler ends it (exit 143: nothing has started) as soon as the
//!    pipeline is over, before it reads another line, so bytes of the tree left on stdin
//!    are never read as a frame (`SIGKILL` would not do: the kernel ignores it when a
//!    container's pid 1 sends it to itself): the container stops, and the engine
//!    reports the transfer failed with what the container printed. This saves the daemon's own chrooted untar (`PUT
//!    .../archive`, the largest cost of a tiny run above `docker run`, see
//!    `docs/benchmarks.md`); the tree is the one the core extractor checked, and it is
//!    unpacked inside the container, by its unprivileged user, before any command runs;
//! 1. it waits on stdin for one frame: a line `N <nonce>` (32 hex digits, fresh per
//!    command), a line `D <cwd>`, a line `E NAME <value>` per variable (the plain `env` and
//!    the secrets alike), a line `A <arg>` per argv element, and an empty line; every byte
//!    of a cwd, value or arg is a three-digit octal escape, so any value travels as one
//!    line of ASCII; a value made only of [`plain`] bytes (most paths, program names and
//!    flags) travels as it is, on a line `d`, `e` or `a`, which the launcher takes without
//!    decoding (each decoded value costs `sh` a fork for `$(printf ...)`, ~0.5 ms in a
//!    fresh container);
//! 2. the engine attaches to the container (stdin, stdout, stderr) and writes the frame;
//! 3. the launcher changes to the cwd, exports each variable (decoded by `printf`), and
//!    runs argv in a background subshell that `exec`s it with stdin at `/dev/null` (so a
//!    name like `echo` or `exit` is the image's program, never a shell builtin), then
//!    `wait`s for it (reaping, as pid 1, whatever else of the sandbox ends meanwhile);
//!    the command's environment is exactly the template's (`PATH`, `HOME`, `LANG`, and
//!    Docker's `HOSTNAME`) plus the frame's variables (the shell's own `PWD`/`OLDPWD` are
//!    unset);
//! 4. when the command has ended, the launcher writes the [end mark](end_mark) (`NUL ESC
//!    crownest-end:<nonce> NUL`) on stdout and on stderr, waits for one line on stdin (the
//!    engine's acknowledgement), and exits with the command's status (`128 + n` when a
//!    signal `n` ended it, as `wait` reports it).
//!
//! Why the end mark: once a container has exited, the daemon gives its attached clients
//! only about 2 s (moby's `StreamConfig.Wait`) to take the output still in its pipes, then
//! closes the stream *cleanly*. Under CPU starvation that cut the tail of 8 MB of output
//! with nothing to tell it from a complete stream. Now the container cannot exit before
//! the engine has read both marks, which come after every byte the command wrote; the
//! engine strips them, and a stream that ends without them (unless this sandbox was
//! killing the command) fails the run `sandbox_error`. The nonce keeps ordinary output
//! (say, this file printed by `cat`) from ever being taken for the mark; a command that
//! found the nonce could only cut its own recorded output, which it can do anyway.
//!
//! Signals: the launcher is pid 1 of the container's PID namespace, so the kernel delivers
//! it only the signals it has a handler for, and its exit ends every other process of the
//! namespace. Its one handler, for `SIGTERM` (which Docker sends to pid 1), ends the
//! launcher with 143 before the command has started, and after passes the signal on with
//! `kill -TERM -1`: to every process of the sandbox user but itself, the command and
//! anything it started in other groups or sessions (`kill(-1)` never reaches past the
//! caller's PID namespace; outside a container, as in this module's tests, the handler
//! signals only the command's subshell); the command's subshell has the
//! default action again. A signal that comes after the command's start but before the
//! launcher has its pid is passed on as soon as it has. A `wait` that the signal
//! interrupted is taken up again, so the status is the command's: while the command
//! lives, by waiting again; once it is gone (the shell may reap it while the handler
//! runs), by asking the shell for the status it kept (`wait` answers 127 for a status it
//! reported already: the first answer stands then). `SIGKILL` ends pid 1 and with it the
//! whole container, marks and all (the run is then ending `timed_out` or `canceled`, whose
//! output is cut by nature). docker-init (tini), which did this before, is not used: it cost every run
//! ~4 ms between the container's start and its exit, and ~1 ms more at its removal
//! (`docs/benchmarks.md`).
//!
//! So nothing of the request is in the container's configuration: `docker inspect`, the
//! daemon's `config.v2.json` and a kept sandbox show the launcher and the template
//! variables only. Secret values cross only the API socket and the container's stdin
//! pipe, which nothing logs (the log driver is `none`); `/proc/<pid>/environ` of the
//! running command shows them to root on the host, as for any process.
//!
//! A launcher that does not receive a whole frame exits 125 without starting anything; a
//! program that cannot be executed (the pre-flight check normally catches an unknown
//! program before) exits 126/127 with a message starting with [`NAME`], which `exec.rs`
//! reports as `spawn_failed`. The launcher's own variables are named `_crownest_*`; a
//! variable with that prefix is refused (it would be overwritten while the frame is read).

use std::collections::BTreeMap;

use crownest_core::SecretValue;

/// `$0` of the launcher: `dash` prefixes its own error messages with it.
pub(crate) const NAME: &str = "crownest-launcher";

/// The launcher script (see the module docs).
pub(crate) const LAUNCHER: &str = r#"unset PWD OLDPWD
_crownest_pid=
_crownest_started=
_crownest_pending=
_crownest_sig=
_crownest_fwd() { if [ "$$" = 1 ]; then kill -TERM -1; else kill -TERM "$_crownest_pid"; fi 2>/dev/null; }
trap '_crownest_sig=1; if [ -z "$_crownest_started" ]; then exit 143; elif [ -z "$_crownest_pid" ]; then _crownest_pending=1; else _crownest_fwd; fi' TERM
_crownest_ok=
_crownest_end=
_crownest_rc=
_crownest_first=1
set --
while IFS=' ' read -r _crownest_k _crownest_n _crownest_v; do
  case $_crownest_k in
    '') _crownest_ok=1; break ;;
    W) case $_crownest_n in
         *[!0-9a-f]*|'') exit 125 ;;
       esac
       if [ -n "$_crownest_first" ] && [ -w . ] && command -v tar >/dev/null 2>&1 \
          && command -v dd >/dev/null 2>&1
       then
         printf '\000\033crownest-ws:%s:ready\000' "$_crownest_n"
         { { while IFS=' ' read -r _crownest_k _crownest_v && [ "$_crownest_k" = C ]; do
               if [ "$_crownest_v" = 0 ]; then
                 printf '\000\033crownest-ws:%s:complete\000' "$_crownest_n" >&2
                 break
               fi
               LC_ALL=C dd bs="$_crownest_v" count=1 iflag=fullblock status=none || { kill -TERM $$; exit 1; }
             done; } | LC_ALL=C tar -x -p -f -; } 2>&1
         _crownest_v=$?
         printf '\000\033crownest-ws:%s:%s\000' "$_crownest_n" "$_crownest_v"
         [ "$_crownest_v" = 0 ] || exit 125
       else
         printf '\000\033crownest-ws:%s:unsupported\000' "$_crownest_n"
       fi
       _crownest_first=
       continue ;;
    N) case $_crownest_n in
         *[!0-9a-f]*|'') ;;
         *) _crownest_end=$_crownest_n ;;
       esac ;;
    D) _crownest_n=$(printf "$_crownest_n"; printf x)
       cd "${_crownest_n%x}" || _crownest_rc=127
       unset PWD OLDPWD ;;
    d) cd "$_crownest_n" || _crownest_rc=127
       unset PWD OLDPWD ;;
    E) _crownest_v=$(printf "$_crownest_v"; printf x)
       export "$_crownest_n=${_crownest_v%x}" ;;
    e) export "$_crownest_n=$_crownest_v" ;;
    A) _crownest_n=$(printf "$_crownest_n"; printf x)
       set -- "$@" "${_crownest_n%x}" ;;
    a) set -- "$@" "$_crownest_n" ;;
  esac
  _crownest_first=
done
if [ -z "$_crownest_ok" ] || [ -z "$_crownest_end" ] || [ "$#" -eq 0 ]; then
  echo "crownest: the command was not delivered; nothing was started" >&2
  exit 125
fi
unset _crownest_ok _crownest_k _crownest_n _crownest_v _crownest_first
if [ -z "$_crownest_rc" ]; then
  _crownest_started=1
  (exec "$@") </dev/null &
  _crownest_pid=$!
  [ -z "$_crownest_pending" ] || _crownest_fwd
  while :; do
    _crownest_sig=
    wait "$_crownest_pid"
    _crownest_rc=$?
    [ "$_crownest_rc" -gt 128 ] && [ -n "$_crownest_sig" ] || break
    kill -0 "$_crownest_pid" 2>/dev/null && continue
    wait "$_crownest_pid"
    _crownest_v=$?
    [ "$_crownest_v" = 127 ] || _crownest_rc=$_crownest_v
    break
  done
fi
printf '\000\033crownest-end:%s\000' "$_crownest_end"
printf '\000\033crownest-end:%s\000' "$_crownest_end" >&2
read -r _crownest_k || :
exit "$_crownest_rc"
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

/// Whether `value` can travel unescaped: not empty, and only ASCII letters, digits and
/// `_-./:,=+@%^~`. None of those is a field separator of `read`, a backslash it would
/// take, or a byte the shell treats specially inside double quotes, so the launcher's
/// `read -r` then `"$var"` gives back exactly `value`.
pub(crate) fn plain(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:,=+@%^~".contains(&b))
}

/// One value of a frame line: as it is after the lowercase `tag`, or escaped after the
/// uppercase one.
fn value_line(out: &mut Vec<u8>, tag: u8, name: Option<&str>, value: &str) {
    let plain = plain(value);
    out.push(if plain { tag } else { tag.to_ascii_uppercase() });
    out.push(b' ');
    if let Some(name) = name {
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
    }
    if plain {
        out.extend_from_slice(value.as_bytes());
    } else {
        escaped(out, value);
    }
    out.push(b'\n');
}

/// What one frame carries.
pub(crate) struct Command<'a> {
    /// This command's end-mark nonce ([`new_nonce`]).
    pub(crate) nonce: &'a str,
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
    if command.nonce.len() != 32
        || !command
            .nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("the end-mark nonce is not 32 hex digits".into());
    }
    out.extend_from_slice(b"N ");
    out.extend_from_slice(command.nonce.as_bytes());
    out.push(b'\n');
    if command.cwd.contains('\0') {
        return Err("the working directory contains NUL".into());
    }
    value_line(&mut out, b'd', None, command.cwd);
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
        value_line(&mut out, b'e', Some(name), value);
    }
    for arg in command.argv {
        if arg.contains('\0') {
            return Err("an argument contains NUL".into());
        }
        value_line(&mut out, b'a', None, arg);
    }
    out.push(b'\n');
    Ok(out)
}

/// A fresh end-mark nonce: 32 lowercase hex digits (a random v4 UUID's 122 random bits).
pub(crate) fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A workspace mark of step 0 (`word`: `ready`, `unsupported`, `complete`, or the status
/// of `tar`).
pub(crate) fn ws_mark(nonce: &str, word: &str) -> Vec<u8> {
    let mut mark = b"\0\x1bcrownest-ws:".to_vec();
    mark.extend_from_slice(nonce.as_bytes());
    mark.push(b':');
    mark.extend_from_slice(word.as_bytes());
    mark.push(0);
    mark
}

/// Reads the launcher's answers of step 0 from everything it printed (the command has not
/// started, so all of it is the launcher's or `tar`'s): the words of the workspace marks in
/// order, and the other text (at most 8 KiB of it, for an error message).
#[derive(Default)]
pub(crate) struct WsReplies {
    buf: Vec<u8>,
    text: Vec<u8>,
}

impl WsReplies {
    const TEXT_LIMIT: usize = 8 * 1024;

    /// Takes output; returns the words of the marks it completed.
    pub(crate) fn push(&mut self, nonce: &str, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let prefix = ws_mark(nonce, "");
        let prefix = &prefix[..prefix.len() - 1];
        let mut words = Vec::new();
        while let Some(at) = self.buf.windows(prefix.len()).position(|w| w == prefix) {
            let Some(len) = self.buf[at + prefix.len()..].iter().position(|&b| b == 0) else {
                break;
            };
            let word = &self.buf[at + prefix.len()..at + prefix.len() + len];
            words.push(String::from_utf8_lossy(word).into_owned());
            let before: Vec<u8> = self.buf[..at].to_vec();
            self.keep_text(&before);
            self.buf.drain(..at + prefix.len() + len + 1);
        }
        // Text that cannot be the start of a mark any more.
        if !self.buf.contains(&0) && self.buf.len() > prefix.len() {
            let text = std::mem::take(&mut self.buf);
            self.keep_text(&text);
        }
        words
    }

    fn keep_text(&mut self, text: &[u8]) {
        let room = Self::TEXT_LIMIT.saturating_sub(self.text.len());
        self.text.extend_from_slice(&text[..text.len().min(room)]);
    }

    /// The text printed besides the marks (lossy UTF-8, trimmed).
    pub(crate) fn text(&self) -> String {
        let mut all = self.text.clone();
        all.extend_from_slice(&self.buf);
        String::from_utf8_lossy(&all).trim().to_owned()
    }
}

/// The bytes the launcher writes on stdout and on stderr once the command has ended.
pub(crate) fn end_mark(nonce: &str) -> Vec<u8> {
    let mut mark = b"\0\x1bcrownest-end:".to_vec();
    mark.extend_from_slice(nonce.as_bytes());
    mark.push(0);
    mark
}

/// Finds the end mark in one output stream and strips it, chunk by chunk.
///
/// Output passes through at once, except a tail that could be the start of the mark
/// (output rarely ends in `NUL ESC`): that is held until the next chunk tells. Bytes after
/// the mark (a detached child still writing) pass through too.
pub(crate) struct EndMark {
    mark: Vec<u8>,
    held: Vec<u8>,
    seen: bool,
}

impl EndMark {
    pub(crate) fn new(nonce: &str) -> Self {
        Self {
            mark: end_mark(nonce),
            held: Vec::new(),
            seen: false,
        }
    }

    /// Whether the mark has arrived.
    pub(crate) fn seen(&self) -> bool {
        self.seen
    }

    /// Takes one chunk; returns the output bytes it releases (without the mark).
    pub(crate) fn push<'c>(&mut self, chunk: &'c [u8]) -> std::borrow::Cow<'c, [u8]> {
        // The mark starts with NUL: a chunk without one, with nothing held, is all output.
        if self.seen || (self.held.is_empty() && !chunk.contains(&0)) {
            return std::borrow::Cow::Borrowed(chunk);
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        if let Some(at) = data
            .windows(self.mark.len())
            .position(|w| w == self.mark.as_slice())
        {
            self.seen = true;
            data.drain(at..at + self.mark.len());
            return data.into();
        }
        // The longest tail that is a proper prefix of the mark.
        let keep = (1..self.mark.len().min(data.len() + 1))
            .rev()
            .find(|&n| data.ends_with(&self.mark[..n]))
            .unwrap_or(0);
        self.held = data.split_off(data.len() - keep);
        data.into()
    }

    /// The end of the stream: the bytes still held (they were output after all).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    use std::path::Path;
    use std::process::{Command as Process, Stdio};

    use super::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

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
            nonce: NONCE,
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
            b"N 0123456789abcdef0123456789abcdef\nd /w\ne P p\nE A \\170\\012\nE B \na t\n\n"
                .to_vec()
        );
        // Escaped: anything `read` or the shell could change (spaces, backslashes, quotes,
        // `$`, non-ASCII, the empty value); plain: the common paths, names and flags.
        let f = frame_of(
            "/a dir",
            &env(&[("P", "$HOME"), ("Q", "/usr/bin:/bin")]),
            &secrets(&[]),
            &["python3", "-c", "a\\b", "--flag=x,y@z"],
        );
        assert_eq!(
            String::from_utf8(f).unwrap(),
            "N 0123456789abcdef0123456789abcdef\nD \\057\\141\\040\\144\\151\\162\n\
             E P \\044\\110\\117\\115\\105\ne Q /usr/bin:/bin\na python3\na -c\n\
             A \\141\\134\\142\na --flag=x,y@z\n\n"
        );
        for v in [
            "", " x", "x y", "a\\b", "'", "\"", "$x", "`x`", "*", "ä", "x\ty",
        ] {
            assert!(!plain(v), "{v:?}");
        }
        let argv = vec!["t".to_owned()];
        for (e, s) in [
            (env(&[]), secrets(&[("_crownest_v", "x")])),
            (env(&[("A-B", "x")]), secrets(&[])),
            (env(&[("A", "x\0")]), secrets(&[])),
        ] {
            assert!(
                frame(&Command {
                    nonce: NONCE,
                    cwd: "/",
                    env: &e,
                    secrets: &s,
                    argv: &argv
                })
                .is_err()
            );
        }
    }

    #[test]
    fn the_nonce_is_32_hex_digits() {
        let n = new_nonce();
        assert_eq!(n.len(), 32);
        assert_ne!(n, new_nonce());
        let (e, s, argv) = (env(&[]), secrets(&[]), vec!["t".to_owned()]);
        for bad in [
            "",
            "0123",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde\n",
        ] {
            assert!(
                frame(&Command {
                    nonce: bad,
                    cwd: "/",
                    env: &e,
                    secrets: &s,
                    argv: &argv
                })
                .is_err()
            );
        }
    }

    #[test]
    fn the_end_mark_is_found_across_chunks_and_stripped() {
        let mark = end_mark(NONCE);
        let mut text = b"out\0\x1bnot the mark; ".to_vec();
        text.extend_from_slice(&end_mark("ffffffffffffffffffffffffffffffff"));
        text.extend_from_slice(b"tail\0");
        let mut stream = text.clone();
        stream.extend_from_slice(&mark);
        stream.extend_from_slice(b"after");
        // Every way of cutting the stream into two or three chunks.
        for a in 0..=stream.len() {
            for b in (a..=stream.len()).step_by(7) {
                let mut m = EndMark::new(NONCE);
                let mut got = m.push(&stream[..a]).into_owned();
                got.extend_from_slice(&m.push(&stream[a..b]));
                got.extend_from_slice(&m.push(&stream[b..]));
                got.extend(m.finish());
                assert!(m.seen(), "cut at {a}/{b}");
                let mut want = text.clone();
                want.extend_from_slice(b"after");
                assert_eq!(got, want, "cut at {a}/{b}");
            }
        }
        // Without the mark, everything comes out and nothing is seen; a tail that looks
        // like the start of the mark is held only until the next chunk.
        let mut m = EndMark::new(NONCE);
        assert_eq!(&*m.push(b"line\n"), b"line\n");
        assert_eq!(&*m.push(b"x\0\x1bcrow"), b"x");
        assert_eq!(&*m.push(b"d"), b"\0\x1bcrowd");
        assert_eq!(&*m.push(&mark[..5]), b"");
        assert_eq!(m.finish(), &mark[..5]);
        assert!(!m.seen());
    }

    /// Starts the launcher with the host's `/bin/sh` (the same POSIX script the image
    /// runs), in a process group of its own (not pid 1: its `SIGTERM` handler then passes
    /// the signal to the command's subshell only, never to `-1`).
    fn spawn_launcher() -> std::process::Child {
        spawn_launcher_in(Path::new("/"), "/usr/bin:/bin")
    }

    fn spawn_launcher_in(cwd: &Path, path: &str) -> std::process::Child {
        Process::new("/bin/sh")
            .current_dir(cwd)
            .arg("-c")
            .arg(LAUNCHER)
            .arg(NAME)
            .env_clear()
            .env("PATH", path)
            .env("TEMPLATE", "kept")
            // (Without it Python would add `LC_CTYPE` itself, PEP 538.)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn launch(frame: &[u8]) -> std::process::Output {
        let mut child = spawn_launcher();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(frame).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// `bytes` without the trailing end mark (which must be there).
    fn before_mark(bytes: &[u8]) -> &[u8] {
        let mark = end_mark(NONCE);
        assert!(
            bytes.ends_with(&mark),
            "no end mark at the end of {:?}",
            String::from_utf8_lossy(bytes)
        );
        &bytes[..bytes.len() - mark.len()]
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
        assert!(before_mark(&out.stderr).is_empty());
        let text = String::from_utf8(before_mark(&out.stdout).to_vec()).unwrap();
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
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn the_command_is_a_program_and_its_status_is_the_launchers() {
        // `echo` is the image's program, not dash's builtin (which has no `-e`).
        let out = launch(&frame_of(
            "/",
            &env(&[]),
            &secrets(&[]),
            &["echo", "-e", "a\\tb"],
        ));
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(before_mark(&out.stdout), b"a\tb\n");
        let out = launch(&frame_of(
            "/",
            &env(&[]),
            &secrets(&[]),
            &["sh", "-c", "printf x; printf y >&2; exit 3"],
        ));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(before_mark(&out.stdout), b"x");
        assert_eq!(before_mark(&out.stderr), b"y");
        let out = launch(&frame_of("/", &env(&[]), &secrets(&[]), &["exit", "4"]));
        assert_eq!(out.status.code(), Some(127), "no program is named exit");
        let out = launch(&frame_of(
            "/nonexistent-dir",
            &env(&[]),
            &secrets(&[]),
            &["true"],
        ));
        assert_eq!(out.status.code(), Some(127));
        assert!(String::from_utf8_lossy(before_mark(&out.stderr)).starts_with(NAME));
    }

    /// A launcher running `script` (`sh -c`), which has printed `up`; then Docker's
    /// `SIGTERM` to the launcher alone (as to a container's pid 1) and the end mark read.
    fn terminated_after_up(
        script: &str,
    ) -> (
        std::process::Child,
        std::process::ChildStdin,
        std::process::ChildStdout,
    ) {
        let mut child = spawn_launcher();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let f = frame_of("/", &env(&[]), &secrets(&[]), &["sh", "-c", script]);
        stdin.write_all(&f).unwrap();
        let mut up = [0u8; 3];
        std::io::Read::read_exact(&mut stdout, &mut up).unwrap();
        assert_eq!(&up, b"up\n");
        terminate(&child);
        let mark = end_mark(NONCE);
        let mut got = vec![0u8; mark.len()];
        std::io::Read::read_exact(&mut stdout, &mut got).unwrap();
        assert_eq!(got, mark);
        (child, stdin, stdout)
    }

    #[test]
    fn the_launcher_outlives_a_terminated_command_and_waits_for_the_acknowledgement() {
        // The launcher passes the signal on; the marks come, then it waits for the
        // engine's line.
        let (mut child, mut stdin, mut stdout) = terminated_after_up("echo up; exec sleep 30");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "it waits for the acknowledgement"
        );
        stdin.write_all(b"\n").unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(143),
            "the command's own status: 128 + SIGTERM"
        );
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
        assert!(rest.is_empty());

        // A command that handles the signal ends with a status of its own: the launcher's
        // `wait`, cut short by the same signal, is taken up again for it, also when the
        // shell reaped the command while its handler ran (1 in ~20 under load, so a few
        // rounds).
        for _ in 0..10 {
            let (mut child, mut stdin, _stdout) =
                terminated_after_up("trap 'exit 7' TERM; sleep 30 >/dev/null 2>&1 & echo up; wait");
            stdin.write_all(b"\n").unwrap();
            assert_eq!(child.wait().unwrap().code(), Some(7));
        }
    }

    /// Sends `SIGTERM` to the launcher alone, as Docker does to a container's pid 1.
    fn terminate(child: &std::process::Child) {
        let killed = Process::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    #[test]
    fn an_incomplete_frame_never_starts_the_command() {
        let out =
            launch(b"N 0123456789abcdef0123456789abcdef\nD \\057\nA \\163\\150\nA \\055\\143");
        assert_eq!(out.status.code(), Some(125));
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not delivered"));
        let out = launch(b"N 0123456789abcdef0123456789abcdef\nD \\057\n\n");
        assert_eq!(out.status.code(), Some(125), "no argv");
        let out = launch(b"D \\057\nA \\164\\162\\165\\145\n\n");
        assert_eq!(out.status.code(), Some(125), "no nonce");
    }

    #[test]
    fn a_failed_exec_is_named_by_the_launcher() {
        let out = launch(&frame_of("/", &env(&[]), &secrets(&[]), &["nope"]));
        assert_eq!(out.status.code(), Some(127));
        assert!(
            String::from_utf8_lossy(before_mark(&out.stderr)).starts_with(NAME),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads `stream` until `want` arrived; returns what came before it.
    fn read_until(stream: &mut impl std::io::Read, want: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(want) {
            assert_eq!(
                stream.read(&mut byte).unwrap(),
                1,
                "the stream ended before {:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            );
            got.push(byte[0]);
        }
        got.truncate(got.len() - want.len());
        got
    }

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        b.append_data(&mut dir, "./sub", std::io::empty()).unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o751);
        file.set_size(body.len() as u64);
        file.set_mtime(1_000_000_000);
        b.append_data(&mut file, "./sub/data.bin", &body[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "./link", "sub/data.bin").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn the_workspace_arrives_in_chunks_before_the_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_launcher_in(dir.path(), "/usr/bin:/bin");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin.write_all(format!("W {NONCE}\n").as_bytes()).unwrap();
        assert!(read_until(&mut stdout, &ws_mark(NONCE, "ready")).is_empty());
        let tar = sample_tar();
        // Odd chunk sizes: a chunk boundary inside a header and inside the file's body.
        for piece in [&tar[..100], &tar[100..70_001], &tar[70_001..]] {
            stdin
                .write_all(format!("C {}\n", piece.len()).as_bytes())
                .unwrap();
            stdin.write_all(piece).unwrap();
        }
        stdin.write_all(b"C 0\n").unwrap();
        assert!(read_until(&mut stdout, &ws_mark(NONCE, "complete")).is_empty());
        assert!(read_until(&mut stdout, &ws_mark(NONCE, "0")).is_empty());
        // The command comes after, on the same stdin, and sees the tree.
        stdin
            .write_all(&frame_of(
                dir.path().to_str().unwrap(),
                &env(&[]),
                &secrets(&[]),
                &["sh", "-c", "wc -c < link; ls"],
            ))
            .unwrap();
        let out = read_until(&mut stdout, &end_mark(NONCE));
        assert_eq!(String::from_utf8_lossy(&out), "300000\nlink\nsub\n");
        stdin.write_all(b"\n").unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
        let meta = std::fs::metadata(dir.path().join("sub/data.bin")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o751, "modes are kept");
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime(&meta),
            1_000_000_000,
            "mtimes are kept"
        );
    }

    #[test]
    fn a_workspace_that_does_not_unpack_ends_the_launcher_before_any_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_launcher_in(dir.path(), "/usr/bin:/bin");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin.write_all(format!("W {NONCE}\n").as_bytes()).unwrap();
        read_until(&mut stdout, &ws_mark(NONCE, "ready"));
        // Not a tar; and a frame queued right behind it must never run.
        let junk = vec![b'x'; 5000];
        stdin.write_all(b"C 5000\n").unwrap();
        stdin.write_all(&junk).unwrap();
        stdin.write_all(b"C 0\n").unwrap();
        stdin
            .write_all(&frame_of("/", &env(&[]), &secrets(&[]), &["touch", "ran"]))
            .unwrap();
        let said = read_until(&mut stdout, &ws_mark(NONCE, "complete"));
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let mut replies = WsReplies::default();
        let mut words = replies.push(NONCE, &said);
        words.extend(replies.push(NONCE, &rest));
        assert_eq!(words.len(), 1, "{words:?}");
        assert_ne!(words[0], "0");
        assert!(replies.text().contains("tar"), "{}", replies.text());
        assert_eq!(child.wait().unwrap().code(), Some(125));
        assert!(!dir.path().join("ran").exists());
    }

    #[test]
    fn a_dd_that_fails_ends_the_launcher_before_the_tree_is_read_as_a_frame() {
        // A `dd` that reads nothing (as one without `iflag=fullblock` would): the chunk's
        // bytes stay on stdin, and here they even look like a frame.
        let bin = tempfile::tempdir().unwrap();
        let fake = bin.path().join("dd");
        std::fs::write(&fake, "#!/bin/sh\necho 'dd: unknown flag' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.path().display());
        let mut child = spawn_launcher_in(dir.path(), &path);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin.write_all(format!("W {NONCE}\n").as_bytes()).unwrap();
        read_until(&mut stdout, &ws_mark(NONCE, "ready"));
        let lookalike = frame_of("/", &env(&[]), &secrets(&[]), &["touch", "ran"]);
        let _ = stdin.write_all(format!("C {}\n", lookalike.len()).as_bytes());
        let _ = stdin.write_all(&lookalike);
        let _ = stdin.write_all(b"C 0\n");
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(143),
            "ended by its handler: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(String::from_utf8_lossy(&rest).contains("dd: unknown flag"));
        assert!(
            !dir.path().join("ran").exists(),
            "no frame was read from the tree"
        );
    }

    #[test]
    fn an_image_without_tar_is_told_apart_and_the_command_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_launcher_in(dir.path(), "/nonexistent");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin.write_all(format!("W {NONCE}\n").as_bytes()).unwrap();
        read_until(&mut stdout, &ws_mark(NONCE, "unsupported"));
        stdin
            .write_all(&frame_of(
                "/",
                &env(&[]),
                &secrets(&[]),
                &["/bin/echo", "ok"],
            ))
            .unwrap();
        assert_eq!(read_until(&mut stdout, &end_mark(NONCE)), b"ok\n");
        stdin.write_all(b"\n").unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }

    #[test]
    fn workspace_replies_are_found_across_chunks() {
        let mut stream = b"tar: a message\n".to_vec();
        stream.extend_from_slice(&ws_mark(NONCE, "complete"));
        stream.extend_from_slice(&ws_mark("ffffffffffffffffffffffffffffffff", "0"));
        stream.extend_from_slice(&ws_mark(NONCE, "2"));
        for cut in 0..=stream.len() {
            let mut r = WsReplies::default();
            let mut words = r.push(NONCE, &stream[..cut]);
            words.extend(r.push(NONCE, &stream[cut..]));
            assert_eq!(words, ["complete", "2"], "cut at {cut}");
            assert!(r.text().starts_with("tar: a message"), "cut at {cut}");
        }
    }
}
