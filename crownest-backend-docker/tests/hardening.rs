//! Each hardening default, proven from inside a real container. (The fork bomb, the memory
//! hog, SIGTERM across sessions and kept-sandbox sweeps are backend conformance cases now:
//! `crownest_core::conformance`, run by `tests/conformance.rs`.) Nothing here sends a packet
//! anywhere: the network test only lists interfaces.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{output_of, py, run, sandbox_containers};
use crownest_backend_docker::{DockerBackend, DockerConfig, LABEL_SANDBOX};
use crownest_core::event::FailureKind;
use crownest_core::{Limits, OutputStream, RunStatus, SandboxBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_as_non_root_without_capabilities() {
    let Some(b) = common::backend().await else {
        return;
    };
    let code = "import os\nprint(os.getuid(), os.getgid(), os.geteuid())\n\
                st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n\
                print(st['CapEff'].strip(), st['CapPrm'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip())";
    let (done, events) = run(&b, py(code)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let out = output_of(&events, OutputStream::Stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("10001 10001 10001"), "uid != 0: {out}");
    assert_eq!(
        lines.next(),
        Some("0000000000000000 0000000000000000 0000000000000000 1"),
        "no capabilities, no-new-privileges: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_loopback_interface_exists() {
    let Some(b) = common::backend().await else {
        return;
    };
    let code = "import os\nprint(sorted(os.listdir('/sys/class/net')))\n\
                print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))";
    let (done, events) = run(&b, py(code)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(output_of(&events, OutputStream::Stdout), "['lo']\n['lo']\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_filesystem_is_read_only_and_tmp_and_workspace_are_writable() {
    let Some(b) = common::backend().await else {
        return;
    };
    let code = "import errno\n\
                for p in ['/usr/crownest-probe', '/etc/crownest-probe', '/crownest-probe']:\n\
                \x20   try:\n\
                \x20       open(p, 'w').write('x'); print(p, 'WRITABLE')\n\
                \x20   except OSError as e:\n\
                \x20       print(p, errno.errorcode[e.errno])\n\
                open('/tmp/ok', 'w').write('x'); open('/workspace/ok', 'w').write('x'); print('tmp+workspace ok')";
    let (done, events) = run(&b, py(code)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let out = output_of(&events, OutputStream::Stdout);
    assert_eq!(
        out,
        "/usr/crownest-probe EROFS\n/etc/crownest-probe EROFS\n/crownest-probe EROFS\ntmp+workspace ok\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ladder_ends_a_command_and_its_detached_children() {
    let Some(b) = common::backend().await else {
        return;
    };
    // The parent ignores SIGTERM; a child in its own session would too; only SIGKILL of the
    // container ends them. The run must end promptly after the deadline anyway.
    let code = "import signal, subprocess, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                subprocess.Popen(['python3', '-c', 'import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(1000)'], start_new_session=True)\n\
                print('ready', flush=True)\ntime.sleep(1000)";
    let mut spec = py(code).with_timeout_ms(1500);
    spec.limits.kill_grace_ms = Some(500);
    let (done, events) = tokio::time::timeout(Duration::from_secs(30), run(&b, spec))
        .await
        .expect("the run ends promptly after its deadline");
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::TimedOut)
    );
    let rungs: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            crownest_core::EventKind::Kill { signal, .. } => signal.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(rungs, ["SIGTERM", "SIGKILL"], "both rungs were needed");
    let sandbox = done.sandbox.as_ref().unwrap();
    assert!(sandbox.destroyed);
    common::assert_gone(&b, &sandbox.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_carry_the_hardened_config_and_labels() {
    let Some(b) = common::backend().await else {
        return;
    };
    let limits = Limits {
        memory_bytes: 256 * 1024 * 1024,
        pids: 77,
        open_files: 333,
        ..Limits::default()
    };
    let sb = common::sandbox(&b, limits).await;
    let containers = sandbox_containers(&b, sb.id()).await;
    assert_eq!(containers.len(), 1, "one container per sandbox");
    assert_hardened(&b, &containers[0], sb.id()).await;
    let sink = common::CollectSink::default();
    let outcome = sb.exec(&common::request(&["true"]), &sink).await.unwrap();
    assert_eq!(outcome.status, crownest_core::ExitStatus::Exited(0));
    assert_eq!(sink.started.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        sandbox_containers(&b, sb.id()).await,
        containers,
        "the container that received the workspace ran the command"
    );
    assert_hardened(&b, &containers[0], sb.id()).await;
    let iso = sb.isolation();
    assert_eq!(iso.network, crownest_core::NetworkIsolation::None);
    assert_eq!(iso.pids, Some(77));
    assert_eq!(iso.user.as_deref(), Some("10001:10001"));
    assert!(
        sb.identity()
            .facts
            .get("imageId")
            .is_some_and(|i| i.starts_with("sha256:"))
    );
    let id = sb.id().to_owned();
    sb.destroy().await.unwrap();
    common::assert_gone(&b, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_names_the_build_script() {
    let Some(_) = common::backend().await else {
        return;
    };
    let b =
        DockerBackend::connect(DockerConfig::default().with_image("crownest/no-such-image:latest"))
            .await
            .unwrap();
    let t = b.templates().await.unwrap();
    assert!(!t[0].available);
    assert!(
        t[0].reason
            .as_deref()
            .unwrap()
            .contains("scripts/build-docker-image.sh"),
        "{t:?}"
    );
    let err = b
        .create(&common::sandbox_spec(Limits::default()))
        .await
        .unwrap_err();
    assert!(
        err.chain().contains("scripts/build-docker-image.sh"),
        "{}",
        err.chain()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_arrives_complete_and_in_order() {
    let Some(b) = common::backend().await else {
        return;
    };
    // 8 MiB of numbered lines on stdout, and a little stderr.
    let code = "import sys\nw = sys.stdout.write\n\
                for i in range(1_000_000):\n    w('%07d\\n' % i)\n\
                sys.stdout.flush(); print('done', file=sys.stderr)";
    let (done, events) = run(&b, py(code)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let out = output_of(&events, OutputStream::Stdout);
    assert_eq!(out.len(), 8_000_000);
    assert!(
        out.lines().enumerate().all(|(i, l)| l == format!("{i:07}")),
        "in order, nothing lost"
    );
    assert_eq!(output_of(&events, OutputStream::Stderr), "done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cwd_and_a_non_executable_file_are_spawn_failures() {
    let Some(b) = common::backend().await else {
        return;
    };
    let (done, _) = run(&b, py("print(1)").with_cwd("no/such/dir")).await;
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::SpawnFailed),
        "{:?}",
        done.failure
    );
    let (done, _) = run(&b, crownest_core::RunSpec::new(["./hello.txt"])).await;
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::SpawnFailed),
        "{:?}",
        done.failure
    );
    assert!(
        done.failure
            .as_ref()
            .unwrap()
            .message
            .contains("permission denied")
    );
    // A command that exits 127 itself is not a spawn failure.
    let (done, _) = run(&b, crownest_core::RunSpec::new(["sh", "-c", "exit 127"])).await;
    assert_eq!(done.exit_code, Some(127));
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::ExitNonzero)
    );
}

async fn assert_hardened(b: &DockerBackend, container: &str, sandbox: &str) {
    let info = b.docker().inspect_container(container, None).await.unwrap();
    let hc = info.host_config.unwrap();
    let cfg = info.config.unwrap();
    assert_eq!(cfg.user.as_deref(), Some("10001:10001"));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(
        hc.init,
        Some(false),
        "the launcher is pid 1, not docker-init"
    );
    assert_eq!(hc.auto_remove, Some(false));
    assert_eq!(hc.memory, Some(256 * 1024 * 1024));
    assert_eq!(hc.memory_swap, Some(256 * 1024 * 1024));
    assert_eq!(hc.pids_limit, Some(77));
    assert!(
        hc.binds.unwrap_or_default().is_empty(),
        "no host path is mounted but the workspace (below)"
    );
    let mounts = info.mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].destination.as_deref(), Some("/workspace"));
    assert_eq!(mounts[0].rw, Some(true));
    if b.places_workspaces_from_host() {
        // The only host path: a directory made for this sandbox in the private work root
        // (`<root>/<dir>/workspace`), whose marker names the sandbox.
        assert_eq!(mounts[0].typ.as_deref(), Some("bind"));
        let source = std::path::PathBuf::from(mounts[0].source.clone().unwrap());
        assert_eq!(source.file_name().unwrap(), "workspace");
        let dir = source.parent().unwrap();
        assert_eq!(
            std::fs::canonicalize(dir.parent().unwrap()).unwrap(),
            std::fs::canonicalize(&b.config().work_dir).unwrap()
        );
        let marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("crownest-sandbox.json")).unwrap())
                .unwrap();
        assert_eq!(marker["backend"], "docker");
        assert_eq!(marker["state"]["sandbox"], sandbox);
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(&source).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (10001, 10001),
            "the sandbox user's"
        );
        let root = std::fs::symlink_metadata(&b.config().work_dir).unwrap();
        assert_eq!(root.mode() & 0o777, 0o700, "the work root is private");
        // Another local user cannot reach it (nor learn what is in it).
        let other = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["ls", "-a"])
            .arg(&source)
            .output()
            .unwrap();
        assert!(
            !other.status.success(),
            "nobody listed the bound workspace: {other:?}"
        );
    } else {
        assert_eq!(mounts[0].typ.as_deref(), Some("volume"));
        // The workspace volume is anonymous (removed with the container) and labelled.
        let volume = mounts[0].name.clone().unwrap();
        assert_ne!(volume, sandbox);
        let labels = b.docker().inspect_volume(&volume).await.unwrap().labels;
        assert_eq!(labels.get(LABEL_SANDBOX).map(String::as_str), Some(sandbox));
    }
    // Nothing of a request is in the configuration: the launcher and the template's
    // variables (see `launcher.rs`).
    assert_eq!(
        cfg.cmd.as_ref().map(|c| c[..2].to_vec()),
        Some(vec!["/bin/sh".to_owned(), "-c".to_owned()])
    );
    assert_eq!(
        cfg.env
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|e| !e.starts_with("HOSTNAME="))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/workspace",
            "LANG=C.UTF-8",
        ]
    );
    let ulimits: Vec<_> = hc
        .ulimits
        .unwrap_or_default()
        .into_iter()
        .map(|u| (u.name.unwrap_or_default(), u.soft, u.hard))
        .collect();
    assert!(
        ulimits.contains(&("nofile".into(), Some(333), Some(333))),
        "{ulimits:?}"
    );
    assert!(
        ulimits.contains(&("core".into(), Some(0), Some(0))),
        "{ulimits:?}"
    );
    assert!(hc.tmpfs.unwrap_or_default().contains_key("/tmp"));
    assert_eq!(hc.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
    let labels = cfg.labels.unwrap_or_default();
    for l in [
        "crownest.run_id",
        "crownest.instance",
        "crownest.owner_pid",
        "crownest.sandbox",
    ] {
        assert!(labels.contains_key(l), "label {l} missing: {labels:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_files_belong_to_the_sandbox_user() {
    let Some(b) = common::backend().await else {
        return;
    };
    let code = "import os\nfor p in ['.', 'hello.txt', 'sub', 'sub/inner.txt']:\n    st = os.stat(p); print(p, st.st_uid, st.st_gid)\n\
                open('hello.txt', 'a').write('more'); open('sub/new', 'w').write('x'); print('writable')";
    let (done, events) = run(&b, py(code)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(
        output_of(&events, OutputStream::Stdout),
        ". 10001 10001\nhello.txt 10001 10001\nsub 10001 10001\nsub/inner.txt 10001 10001\nwritable\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_enabled_is_only_used_when_asked_and_reported() {
    let Some(b) = common::backend().await else {
        return;
    };
    // No packet is sent: only the container's configuration and the report are checked.
    let mut spec = common::sandbox_spec(Limits::default());
    spec.network = crownest_core::Network::Enabled;
    let sb = b.create(&spec).await.unwrap();
    let sink = common::CollectSink::default();
    let out = sb.exec(&common::request(&["true"]), &sink).await.unwrap();
    assert_eq!(out.status, crownest_core::ExitStatus::Exited(0));
    assert_eq!(
        sb.isolation().network,
        crownest_core::NetworkIsolation::Enabled
    );
    let run = b.docker().inspect_container(sb.id(), None).await.unwrap();
    assert_eq!(
        run.host_config.unwrap().network_mode.as_deref(),
        Some("bridge")
    );
    // Signalling a sandbox with no running command is fine, and does not affect later runs.
    let sb2 = common::sandbox(&b, Limits::default()).await;
    sb2.signal(crownest_core::KillSignal::Kill).await.unwrap();
    let out2 = sb2.exec(&common::request(&["true"]), &sink).await.unwrap();
    assert_eq!(out2.status, crownest_core::ExitStatus::Exited(0));
    for s in [sb, sb2] {
        let id = s.id().to_owned();
        s.destroy().await.unwrap();
        common::assert_gone(&b, &id).await;
    }
}

/// The `python-node` promise (docs/images.md): Python ≥ 3.11 and a Node.js LTS line ≥ 22 (an
/// even major: 20 reached its end of life in April 2026) on `PATH`, with the globals a current
/// Node has (the `crypto` a real project missed on the old Node 18 image, `fetch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_keeps_the_python_node_promise() {
    let Some(b) = common::backend().await else {
        return;
    };
    let code = "import subprocess, sys\n\
                assert sys.version_info >= (3, 11), sys.version\n\
                js = 'const [m] = process.versions.node.split(\".\").map(Number);\
                 if (m < 22 || m % 2 !== 0) process.exit(1);\
                 if (typeof crypto !== \"object\" || typeof fetch !== \"function\") process.exit(2);\
                 console.log(\"node\", m)'\n\
                r = subprocess.run(['node', '-e', js], capture_output=True, text=True)\n\
                print('python', sys.version_info[0], sys.version_info[1] >= 11)\n\
                print(r.returncode, r.stdout.strip(), r.stderr.strip())";
    let (done, events) = run(&b, py(code)).await;
    let out = output_of(&events, OutputStream::Stdout);
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?}: {out}",
        done.failure
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("python 3 True"), "{out}");
    let node = lines.next().unwrap_or_default();
    assert!(
        node.starts_with("0 node "),
        "a Node.js LTS line ≥ 22 with global crypto and fetch: {out}"
    );
}

/// The launcher is the container's pid 1 (no docker-init): Docker's `SIGTERM` reaches it,
/// and it passes the signal to every process of the sandbox user, here a child in a
/// session of its own; the status is the command's own (its handler's `exit(3)`), not the
/// launcher's interrupted `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_every_process_through_the_launcher_as_pid_1() {
    let Some(b) = common::backend().await else {
        return;
    };
    let sb = common::sandbox(&b, Limits::default()).await;
    let code = "import os, signal, subprocess, sys, time\n\
print(open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode(), flush=True)\n\
child = 'import signal, sys, time\\ndef h(*a):\\n    open(\"/workspace/child-term\", \"w\").close()\\n    sys.exit(0)\\nsignal.signal(signal.SIGTERM, h)\\nprint(\"child up\", flush=True)\\ntime.sleep(60)'\n\
subprocess.Popen([sys.executable, '-c', child], start_new_session=True)\n\
def h(*a):\n    for _ in range(500):\n        if os.path.exists('/workspace/child-term'):\n            sys.exit(3)\n        time.sleep(0.01)\n    sys.exit(4)\n\
signal.signal(signal.SIGTERM, h)\n\
print('ready', flush=True)\n\
time.sleep(60)\n";
    let sink = common::CollectSink::default();
    let request = common::request(&["python3", "-c", code]);
    let signal = async {
        for _ in 0..3000 {
            let out = sink.stdout();
            if out.contains("ready") && out.contains("child up") {
                sb.signal(crownest_core::KillSignal::Term).await.unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the command never got ready: {}", sink.stdout());
    };
    let (outcome, ()) = tokio::join!(sb.exec(&request, &sink), signal);
    assert_eq!(
        outcome.unwrap().status,
        crownest_core::ExitStatus::Exited(3),
        "{}",
        String::from_utf8_lossy(&sink.stderr.lock().unwrap())
    );
    assert_eq!(sink.stdout().lines().next(), Some("/bin/sh"), "pid 1");
    common::destroy_gone(&b, sb).await;
}
