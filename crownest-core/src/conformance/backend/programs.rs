//! [`Programs`]: the argv each backend runs for the behaviours the suite needs.

/// argv builders for the behaviours the suite needs, per backend (each backend runs
/// different programs: host python, container python, WASI CPython, the fake script).
///
/// A behaviour a backend cannot express at all (a WASI guest cannot fork or receive
/// signals) is `None`; the cases that need it are reported as skipped by name (see
/// [`super::Need::Program`]), never passed silently.
#[derive(Debug, Clone)]
pub struct Programs {
    /// Exits with the code.
    pub exit_with: fn(i32) -> Vec<String>,
    /// Prints the value of the env var, or `<unset>`, and a newline.
    pub print_env: fn(&str) -> Vec<String>,
    /// Prints the absolute working directory and a newline.
    pub print_cwd: fn() -> Vec<String>,
    /// Prints the content of a workspace file (relative path).
    pub cat: fn(&str) -> Vec<String>,
    /// Reads stdin to EOF and prints the number of bytes read (`0`).
    pub read_stdin: fn() -> Vec<String>,
    /// Prints the first arg to stdout and the second to stderr, each with a newline.
    pub stdout_stderr: fn(&str, &str) -> Vec<String>,
    /// Prints `ready` then runs until killed.
    pub run_forever: fn() -> Vec<String>,
    /// Prints `ready`, ignores SIGTERM, runs until SIGKILL. `None` when the backend has no
    /// signals (the wasm backend stops the guest directly).
    pub run_forever_ignoring_term: Option<fn() -> Vec<String>>,
    /// Writes content to a relative path.
    pub write_file: fn(&str, &str) -> Vec<String>,
    /// Creates a symlink at the second path pointing to the first.
    pub symlink: fn(&str, &str) -> Vec<String>,
    /// Prints the names in the working directory, sorted, one per line (nothing when empty).
    pub list_workspace: fn() -> Vec<String>,
    /// Writes N lines of 1024 bytes (1023 `x` and a newline) to stdout, then `done` and a
    /// newline to stderr.
    pub flood: fn(u64) -> Vec<String>,
    /// Allocates up to 1 GiB in 16 MiB pieces, then prints `survived`.
    pub memory_hog: fn() -> Vec<String>,
    /// Prints `OPENED <content>` when the path (absolute or relative) can be read, else
    /// `denied`, and a newline.
    pub try_read: fn(&str) -> Vec<String>,
    /// Creates `d/a.txt` (`A`), `d/sub/b.txt` (`BB`) and the symlink `d/link` → `a.txt`.
    pub make_tree: fn() -> Vec<String>,
    /// Ends itself with SIGTERM.
    pub die_by_sigterm: Option<fn() -> Vec<String>>,
    /// Tries 400 forks (children sleep 20 s at most) and prints `<ok> <failed>`.
    pub fork_bomb: Option<fn() -> Vec<String>>,
    /// Starts a detached child (own session) that writes the path after 1 s, and exits at
    /// once.
    pub background_writer: Option<fn(&str) -> Vec<String>>,
    /// Starts a child in its own session that writes `yes` to `child-got-term` when SIGTERM
    /// reaches it and exits, prints `child-ready` once it is set up; the parent exits on
    /// SIGTERM after its child ended.
    pub term_tree: Option<fn() -> Vec<String>>,
    /// Starts a detached child (own session) that ignores SIGTERM and appends a byte to the
    /// path every 50 ms; the parent ignores SIGTERM too and prints `ready` once the child
    /// wrote its first byte.
    pub stubborn_tree: Option<fn(&str) -> Vec<String>>,
    /// Creates a fifo at the path.
    pub mkfifo: Option<fn(&str) -> Vec<String>>,
}

fn py(code: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["python3".to_owned(), "-c".to_owned(), code.to_owned()];
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

impl Programs {
    /// Whether the optional program `name` (a field of this struct) is present. An unknown
    /// name panics: a typo in the suite's table must fail, not skip.
    pub fn has(&self, name: &str) -> bool {
        match name {
            "run_forever_ignoring_term" => self.run_forever_ignoring_term.is_some(),
            "die_by_sigterm" => self.die_by_sigterm.is_some(),
            "fork_bomb" => self.fork_bomb.is_some(),
            "background_writer" => self.background_writer.is_some(),
            "term_tree" => self.term_tree.is_some(),
            "stubborn_tree" => self.stubborn_tree.is_some(),
            "mkfifo" => self.mkfifo.is_some(),
            other => panic!("no optional program named {other:?} in Programs"),
        }
    }

    /// Programs for any backend with a `python3` on its PATH that can fork and signal.
    pub fn python3() -> Self {
        Self {
            exit_with: |c| py("import sys; sys.exit(int(sys.argv[1]))", &[&c.to_string()]),
            print_env: |n| {
                py(
                    "import os, sys; print(os.environ.get(sys.argv[1], '<unset>'))",
                    &[n],
                )
            },
            print_cwd: || py("import os; print(os.getcwd())", &[]),
            cat: |p| {
                py(
                    "import sys; sys.stdout.write(open(sys.argv[1]).read())",
                    &[p],
                )
            },
            read_stdin: || py("import sys; print(len(sys.stdin.read()))", &[]),
            stdout_stderr: |o, e| {
                py(
                    "import sys; print(sys.argv[1], flush=True); print(sys.argv[2], file=sys.stderr, flush=True)",
                    &[o, e],
                )
            },
            run_forever: || {
                py(
                    "import time\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)",
                    &[],
                )
            },
            run_forever_ignoring_term: Some(|| {
                py(
                    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)",
                    &[],
                )
            }),
            write_file: |p, c| {
                py(
                    "import os, sys\nd = os.path.dirname(sys.argv[1])\nif d: os.makedirs(d, exist_ok=True)\nopen(sys.argv[1], 'w').write(sys.argv[2])",
                    &[p, c],
                )
            },
            symlink: |t, l| {
                py(
                    "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
                    &[t, l],
                )
            },
            list_workspace: || {
                py(
                    "import os, sys; sys.stdout.write(''.join(n + '\\n' for n in sorted(os.listdir('.'))))",
                    &[],
                )
            },
            flood: |n| {
                py(
                    "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(int(sys.argv[1])): sys.stdout.write(line)\nsys.stdout.flush()\nprint('done', file=sys.stderr)",
                    &[&n.to_string()],
                )
            },
            memory_hog: || {
                py(
                    "chunks = []\nfor i in range(64):\n    chunks.append(bytearray(16 * 1024 * 1024))\nprint('survived')",
                    &[],
                )
            },
            try_read: |p| {
                py(
                    "import sys\ntry:\n    print('OPENED', open(sys.argv[1]).read())\nexcept OSError:\n    print('denied')",
                    &[p],
                )
            },
            make_tree: || {
                py(
                    "import os\nos.makedirs('d/sub')\nopen('d/a.txt', 'w').write('A')\nopen('d/sub/b.txt', 'w').write('BB')\nos.symlink('a.txt', 'd/link')",
                    &[],
                )
            },
            die_by_sigterm: Some(|| {
                py(
                    "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
                    &[],
                )
            }),
            fork_bomb: Some(|| {
                py(
                    "import os, time\nok = failed = 0\nfor _ in range(400):\n    try:\n        pid = os.fork()\n    except OSError:\n        failed += 1; continue\n    if pid == 0:\n        time.sleep(20); os._exit(0)\n    ok += 1\nprint(ok, failed, flush=True)",
                    &[],
                )
            }),
            background_writer: Some(|p| {
                py(
                    "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import sys, time\\ntime.sleep(1)\\nopen(sys.argv[1], \"w\").write(\"late\")', sys.argv[1]], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)",
                    &[p],
                )
            }),
            // The parent's handler is set before the child starts: the test signals once
            // the child is ready, which can be before the parent's next line.
            term_tree: Some(|| {
                py(
                    "import signal, subprocess, sys, time\ndef h(*a):\n    child.wait(timeout=10); sys.exit(0)\nsignal.signal(signal.SIGTERM, h)\nchild = subprocess.Popen([sys.executable, '-c', 'import signal, sys, time\\ndef h(*a):\\n    open(\"child-got-term\", \"w\").write(\"yes\")\\n    sys.exit(0)\\nsignal.signal(signal.SIGTERM, h)\\nprint(\"child-ready\", flush=True)\\ntime.sleep(60)'], start_new_session=True)\ntime.sleep(60)",
                    &[],
                )
            }),
            stubborn_tree: Some(|p| {
                py(
                    "import os, signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsubprocess.Popen([sys.executable, '-c', 'import signal, sys, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\nwhile True:\\n    f = open(sys.argv[1], \"a\"); f.write(\"x\"); f.close(); time.sleep(0.05)', sys.argv[1]], start_new_session=True)\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)",
                    &[p],
                )
            }),
            mkfifo: Some(|p| py("import os, sys; os.mkfifo(sys.argv[1])", &[p])),
        }
    }

    /// Programs for the scripted [`crate::testing::FakeBackend`].
    pub fn fake() -> Self {
        fn f(steps: &[String]) -> Vec<String> {
            let mut v = vec!["fake".to_owned()];
            v.extend(steps.iter().cloned());
            v
        }
        Self {
            exit_with: |c| f(&[format!("exit:{c}")]),
            print_env: |n| f(&[format!("env:{n}")]),
            print_cwd: || f(&["cwd".into()]),
            cat: |p| f(&[format!("cat:{p}")]),
            read_stdin: || f(&["stdin".into()]),
            stdout_stderr: |o, e| f(&[format!("out:{o}"), format!("err:{e}")]),
            run_forever: || f(&["out:ready".into(), "hang".into()]),
            run_forever_ignoring_term: Some(|| {
                f(&["out:ready".into(), "ignore-term".into(), "hang".into()])
            }),
            write_file: |p, c| f(&[format!("write:{p}={c}")]),
            symlink: |t, l| f(&[format!("link:{l}={t}")]),
            list_workspace: || f(&["ls".into()]),
            flood: |n| f(&[format!("outbytes:{}", n * 1024), "err:done".into()]),
            memory_hog: || f(&["oom".into()]),
            try_read: |p| f(&[format!("tryread:{p}")]),
            make_tree: || {
                f(&[
                    "write:d/a.txt=A".into(),
                    "write:d/sub/b.txt=BB".into(),
                    "link:d/link=a.txt".into(),
                ])
            },
            die_by_sigterm: Some(|| f(&["die:15".into()])),
            fork_bomb: None,
            background_writer: None,
            term_tree: None,
            stubborn_tree: None,
            mkfifo: Some(|p| f(&[format!("fifo:{p}")])),
        }
    }
}
