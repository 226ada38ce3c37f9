//! Engine-level behaviour of the process backend with real processes: exit codes, signals,
//! the kill ladder reaching every process the command started (for every containment),
//! output, artifacts, secrets, network and limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use crownest_backend_process::{Containment, ProcessBackend, ProcessConfig};
use crownest_core::artifact::{SkipReason, SkippedEntry};
use crownest_core::event::ArtifactErrorReason;
use crownest_core::run::ArtifactKind;
use crownest_core::{
    EventKind, FailureKind, LimitOverrides, Network, RunSpec, RunStatus, SandboxBackend as _,
};

fn sh(script: &str) -> RunSpec {
    RunSpec::new(["sh", "-c", script])
}

fn failure(done: &crownest_core::RunRecord) -> Option<FailureKind> {
    done.failure.as_ref().map(|f| f.kind)
}

fn survivor_errors(events: &[crownest_core::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Error { code, message } if code == "survivors" => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals() {
    let b = backend(Containment::Auto);
    let (_, done, _) = run(b.clone(), sh("exit 7")).await;
    assert_eq!((done.status, done.exit_code), (RunStatus::Failed, Some(7)));
    assert_eq!(failure(&done), Some(FailureKind::ExitNonzero));

    let (_, done, _) = run(b.clone(), sh("echo fine")).await;
    assert_eq!(
        (done.status, done.exit_code),
        (RunStatus::Succeeded, Some(0))
    );

    let (_, done, _) = run(b.clone(), sh("kill -TERM $$")).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.signal, Some(15));
    assert_eq!(failure(&done), Some(FailureKind::Signaled));

    let (_, done, _) = run(b, sh("echo x").with_cwd("hello.txt")).await;
    assert_eq!(
        failure(&done),
        Some(FailureKind::SpawnFailed),
        "a file as cwd: {:?}",
        done.failure
    );
}

/// In a PID namespace the command's process execs the command itself (not std): a file
/// without a `#!` line still runs under `/bin/sh` with its arguments (as `execvp` did), and
/// an exec that fails (an interpreter that does not exist) is a spawn failure naming the
/// program and the OS error, with nothing left running.
async fn exec_outcomes(containment: Containment) {
    let Some(b) = forced_backend(containment) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain-script");
    std::fs::write(&plain, "echo \"plain $1 $2\"\n").unwrap();
    let broken = dir.path().join("broken-script");
    std::fs::write(&broken, "#!/nonexistent/interpreter\necho never\n").unwrap();
    for p in [&plain, &broken] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let (_, done, events) = run(
        b.clone(),
        RunSpec::new([plain.to_str().unwrap(), "one", "two"]),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout(&events), "plain one two\n");

    let (_, done, _) = run(b, RunSpec::new([broken.to_str().unwrap()])).await;
    assert_eq!(failure(&done), Some(FailureKind::SpawnFailed), "{done:?}");
    let message = done.failure.map(|f| f.message).unwrap_or_default();
    assert!(
        message.contains("broken-script") && message.contains("No such file or directory"),
        "{containment:?}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_outcomes_pid_namespace() {
    exec_outcomes(Containment::PidNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_outcomes_user_namespace() {
    exec_outcomes(Containment::UserNamespace).await;
}

/// The scenario of issue 5: on timeout, a grandchild that ignores SIGTERM, a background
/// child that keeps stdout open and a `setsid` daemon all die; nothing survives.
async fn timeout_kills_the_tree(containment: Containment) {
    let Some(b) = forced_backend(containment) else {
        return;
    };
    let n = unique_sleep();
    let script = format!(
        "trap '' TERM
         sh -c \"trap '' TERM; exec sleep {n}\" &
         sleep {n} &
         setsid sleep {n} &
         setsid sh -c 'sleep {n}' >/dev/null 2>&1 &
         echo ready
         sleep {n}"
    );
    let mut spec = sh(&script).with_timeout_ms(1500);
    spec.limits.kill_grace_ms = Some(500);
    let engine = engine(b.clone()).await;
    let id = start(&engine, spec).await;
    // Wait until the tree is up, and see it from the host.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = processes_with_arg(&n);
        if running.len() >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tree never came up: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = tokio::time::timeout(Duration::from_secs(30), engine.wait(&id))
        .await
        .expect("the run ends within 30 s")
        .unwrap();
    let left = processes_with_arg(&n);
    kill_all(&left);
    let events = events(&engine, &id).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(failure(&done), Some(FailureKind::TimedOut));
    assert!(stdout(&events).contains("ready"));
    assert!(
        left.is_empty(),
        "{containment:?}: processes survived the run: {left:?}"
    );
    assert!(
        survivor_errors(&events).is_empty(),
        "{:?}",
        survivor_errors(&events)
    );
    let ev = engine.evidence(&id).await.unwrap();
    let iso = ev.isolation.unwrap();
    assert_eq!(iso.process_containment, b.containment());
    assert!(!iso.security_boundary);
    assert!(ev.sandbox.destroyed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_tree_pid_namespace() {
    timeout_kills_the_tree(Containment::PidNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_tree_user_namespace() {
    timeout_kills_the_tree(Containment::UserNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_tree_cgroup() {
    timeout_kills_the_tree(Containment::Cgroup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_tree_process_group() {
    timeout_kills_the_tree(Containment::ProcessGroup).await;
}

/// When the main process exits, what it left running dies with it (so a background child
/// holding stdout cannot hang the run).
async fn main_exit_ends_leftovers(containment: Containment) {
    let Some(b) = forced_backend(containment) else {
        return;
    };
    let n = unique_sleep();
    let (_, done, events) = tokio::time::timeout(
        Duration::from_secs(20),
        run(
            b,
            sh(&format!(
                "sleep {n} & setsid sleep {n} & sleep 0.3; echo done"
            )),
        ),
    )
    .await
    .expect("the run did not hang on the held pipe");
    let left = processes_with_arg(&n);
    kill_all(&left);
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout(&events), "done\n");
    assert!(
        left.is_empty(),
        "{containment:?}: leftovers survived: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_exit_ends_leftovers_pid_namespace() {
    main_exit_ends_leftovers(Containment::PidNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_exit_ends_leftovers_cgroup() {
    main_exit_ends_leftovers(Containment::Cgroup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_exit_ends_leftovers_process_group() {
    main_exit_ends_leftovers(Containment::ProcessGroup).await;
}

/// With only a process group, a daemon that escapes before the first scan cannot be
/// killed; it must then be reported, never hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_group_reports_what_it_cannot_kill() {
    let b = backend(Containment::ProcessGroup);
    assert!(!b.capabilities().process_tree_kill);
    let n = unique_sleep();
    let (_, done, events) = run(b, sh(&format!("setsid sh -c 'sleep {n}' & exit 0"))).await;
    let left = processes_with_arg(&n);
    kill_all(&left);
    assert_eq!(done.status, RunStatus::Succeeded);
    if !left.is_empty() {
        assert!(
            !survivor_errors(&events).is_empty(),
            "a leaked daemon was not reported: {left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_tree() {
    let b = backend(Containment::Auto);
    let n = unique_sleep();
    let engine = engine(b).await;
    let id = start(
        &engine,
        sh(&format!("setsid sleep {n} & echo ready; sleep {n}")),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with_arg(&n).len() < 2 {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.cancel(&id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), engine.wait(&id))
        .await
        .unwrap()
        .unwrap();
    let left = processes_with_arg(&n);
    kill_all(&left);
    assert_eq!(done.status, RunStatus::Canceled);
    assert!(left.is_empty(), "survivors after cancel: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_output_round_trips_as_base64() {
    let b = backend(Containment::Auto);
    let script =
        "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000); sys.stdout.flush()";
    let (_, done, events) = run(b, RunSpec::new(["python3", "-c", script])).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let want: Vec<u8> = (0..1000).flat_map(|_| 0u8..=255).collect();
    assert_eq!(stream_bytes(&events, true), want);
    let b64 = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Stdout(c) if c.data_base64.is_some()))
        .count();
    assert!(b64 > 0, "non-UTF-8 chunks travel as dataBase64");
    let json = serde_json::to_string(&events).unwrap();
    assert!(json.contains("\"dataBase64\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_reach_events_or_evidence_and_plain_env_is_kept() {
    let b = backend(Containment::Auto);
    let secret = "s3cr3t-Value-9f8e7d";
    let spec = sh(
        "echo \"token=$API_TOKEN ci=$CI\"; echo true; echo \"$API_TOKEN\" >&2; echo \"$API_TOKEN\" > leak.txt",
    )
    .with_secret("API_TOKEN", secret)
    .with_env("CI", "true")
    .with_artifact("leak.txt", false);
    let (engine, done, events) = run(b, spec).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout(&events), "token=*** ci=true\ntrue\n");
    let events_json = serde_json::to_string(&events).unwrap();
    let evidence_json = serde_json::to_string(&engine.evidence(&done.id).await.unwrap()).unwrap();
    let record_json = serde_json::to_string(&engine.get(&done.id).await.unwrap()).unwrap();
    for (what, json) in [
        ("events", &events_json),
        ("evidence", &evidence_json),
        ("record", &record_json),
    ] {
        assert!(!json.contains(secret), "the secret leaked into the {what}");
    }
    assert!(
        evidence_json.contains("API_TOKEN"),
        "secret names are recorded"
    );
    assert!(
        evidence_json.contains(r#""env":{"CI":"true"}"#),
        "plain env is recorded: {evidence_json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_cases() {
    let b = backend(Containment::Auto);
    let script = "mkfifo pipe.fifo
        ln -s /etc/passwd passwd-link
        mkdir -p dir/nested && echo a > dir/a.txt && echo b > dir/nested/b.txt
        head -c 5000 /dev/zero > big.bin
        echo ok > small.txt";
    let mut spec = sh(script)
        .with_artifact("pipe.fifo", false)
        .with_artifact("passwd-link", false)
        .with_artifact("dir", false)
        .with_artifact("big.bin", false)
        .with_artifact("small.txt", true)
        .with_artifact("missing.txt", false);
    spec.limits.artifact_bytes_each = Some(4096);
    let (engine, done, _) = run(b.clone(), spec).await;
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?} {:?}",
        done.failure,
        done.artifact_errors
    );
    let reason = |p: &str| {
        done.artifact_errors
            .iter()
            .find(|e| e.path == p)
            .map(|e| e.reason)
    };
    assert_eq!(reason("pipe.fifo"), Some(ArtifactErrorReason::NotRegular));
    assert!(matches!(
        reason("passwd-link"),
        Some(ArtifactErrorReason::NotRegular | ArtifactErrorReason::EscapesWorkspace)
    ));
    assert_eq!(reason("big.bin"), Some(ArtifactErrorReason::TooLarge));
    assert_eq!(reason("missing.txt"), Some(ArtifactErrorReason::NotFound));
    let small = done
        .artifacts
        .iter()
        .find(|a| a.path == "small.txt")
        .unwrap();
    assert_eq!(small.size_bytes, 3);
    let dir = done.artifacts.iter().find(|a| a.path == "dir").unwrap();
    assert_eq!(dir.kind, ArtifactKind::Directory);
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut engine.open_artifact(&dir.artifact_id).await.unwrap().1,
        &mut tar_bytes,
    )
    .unwrap();
    let mut names: Vec<String> = tar::Archive::new(&tar_bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n.ends_with("a.txt"))
            && names.iter().any(|n| n.ends_with("nested/b.txt")),
        "{names:?}"
    );

    let (_, done, _) = run(b, sh("true").with_artifact("out/missing.txt", true)).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(failure(&done), Some(FailureKind::MissingRequiredArtifact));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_is_enforced_and_enabled_works() {
    let b = backend(Containment::Auto);
    assert!(
        b.capabilities().network_isolation,
        "root here: namespaces work"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let code = format!(
        "import socket\ntry:\n  socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\nexcept OSError as e:\n  print('refused', e)"
    );
    let (engine, done, events) = run(b.clone(), RunSpec::new(["python3", "-c", &code])).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert!(
        stdout(&events).starts_with("refused"),
        "{}",
        stdout(&events)
    );
    assert_eq!(
        engine
            .evidence(&done.id)
            .await
            .unwrap()
            .isolation
            .unwrap()
            .network,
        crownest_core::NetworkIsolation::None
    );

    let spec = RunSpec::new(["python3", "-c", &code]).with_network(Network::Enabled);
    let (engine, done, events) = run(b, spec).await;
    assert_eq!(stdout(&events), "connected\n");
    assert_eq!(
        engine
            .evidence(&done.id)
            .await
            .unwrap()
            .isolation
            .unwrap()
            .network,
        crownest_core::NetworkIsolation::Enabled
    );
}

/// Commands without network each get a network namespace of their own (the backend makes
/// them ahead, `netns.rs`): never the host's, with nothing in it but a loopback interface,
/// and two commands running at once never share one. Runs one after another on one
/// backend, and two at once. (An ended command's namespace number may be reused by the
/// kernel, so only live ones are compared; that a spare is handed out once is the unit
/// test in `netns.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_without_network_has_a_fresh_network_namespace() {
    let Some(b) = forced_backend(Containment::PidNamespace) else {
        return;
    };
    let script = "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (_, done, events) = run(b.clone(), sh(script)).await;
        assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
        seen.push(stdout(&events));
    }
    let (a, b2) = tokio::join!(run(b.clone(), sh(script)), run(b, sh(script)));
    seen.push(stdout(&a.2));
    seen.push(stdout(&b2.2));
    for out in &seen {
        let mut lines = out.lines();
        let ns = lines.next().unwrap_or_default();
        assert!(ns.starts_with("net:["), "{out:?}");
        assert_ne!(ns, host.to_str().unwrap(), "the host's namespace: {out:?}");
        assert_eq!(lines.collect::<Vec<_>>(), vec!["lo"], "{out:?}");
    }
    assert_ne!(
        seen[3].lines().next(),
        seen[4].lines().next(),
        "two commands at once shared a namespace: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_apply() {
    let b = backend(Containment::Auto);
    let limits = LimitOverrides {
        open_files: Some(123),
        extracted_bytes: Some(100_000),
        artifact_bytes_each: Some(100_000),
        ..LimitOverrides::default()
    };
    let (_, done, events) = run(b.clone(), sh("ulimit -n; ulimit -c").with_limits(limits)).await;
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(stdout(&events), "123\n0\n");
    let (_, done, _) = run(
        b,
        sh("exec head -c 200000 /dev/zero > big").with_limits(limits),
    )
    .await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        failure(&done),
        Some(FailureKind::LimitExceeded),
        "{:?}",
        done.failure
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_env_and_identity() {
    let b = backend(Containment::Auto);
    let (engine, done, events) = run(
        b,
        sh("echo \"$PATH|$HOME|$LANG|$TMPDIR\"; pwd; test -w \"$TMPDIR\" && echo tmp-ok"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    let out = stdout(&events);
    let mut lines = out.lines();
    let vars: Vec<&str> = lines.next().unwrap().split('|').collect();
    assert_eq!(vars[0], "/usr/local/bin:/usr/bin:/bin");
    assert!(vars[1].ends_with("/workspace"));
    assert_eq!(vars[2], "C.UTF-8");
    assert!(vars[3].ends_with("/tmp"));
    assert_eq!(lines.next().unwrap(), vars[1], "cwd is the workspace");
    assert_eq!(lines.next(), Some("tmp-ok"));
    let ev = engine.evidence(&done.id).await.unwrap();
    let facts = ev.template.identity.unwrap().facts;
    assert!(
        facts
            .get("python3.version")
            .is_some_and(|v| v.starts_with("Python 3")),
        "{facts:?}"
    );
    assert!(facts.contains_key("python3.path"));
    assert!(facts.contains_key("node.version") || facts.contains_key("node.missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_read_only_trees() {
    let b = backend(Containment::Auto);
    let (engine, done, _) = run(
        b,
        sh("mkdir -p ro/x && echo f > ro/x/f && chmod 500 ro/x && chmod 000 ro && chmod 500 ."),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded);
    let ev = engine.evidence(&done.id).await.unwrap();
    assert!(ev.sandbox.destroyed);
    let dir = ev
        .isolation
        .unwrap()
        .details
        .get("sandboxDir")
        .cloned()
        .unwrap();
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_artifact_reports_what_it_skipped() {
    let b = backend(Containment::Auto);
    let (engine, done, events) = run(
        b,
        sh("mkdir -p out/sub && echo a > out/a.txt && ln -s a.txt out/link && mkfifo out/sub/pipe")
            .with_artifact("out", false),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let want = vec![
        SkippedEntry {
            path: "out/link".into(),
            reason: SkipReason::Symlink,
        },
        SkippedEntry {
            path: "out/sub/pipe".into(),
            reason: SkipReason::SpecialFile,
        },
    ];
    let reported: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ArtifactCollected { skipped, .. } => Some(skipped.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reported, vec![want.clone()], "the artifact_collected event");
    assert_eq!(done.artifacts[0].skipped, want, "the run record");
    let ev = engine.evidence(&done.id).await.unwrap();
    assert_eq!(ev.artifacts[0].skipped, want, "the evidence");
    let json = serde_json::to_value(&ev).unwrap();
    assert_eq!(
        json["artifacts"][0]["skipped"][1],
        serde_json::json!({"path": "out/sub/pipe", "reason": "special_file"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_does_not_wait_for_the_deletion() {
    let config = ProcessConfig {
        removal_wait: Duration::ZERO,
        ..ProcessConfig::with_root(root())
    };
    let b = std::sync::Arc::new(ProcessBackend::new(config).unwrap());
    let (engine, done, _) = run(
        b,
        sh("mkdir -p many && cd many && i=0; while [ $i -lt 2000 ]; do : > f$i; i=$((i+1)); done"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let ev = engine.evidence(&done.id).await.unwrap();
    assert!(
        ev.sandbox.destroyed,
        "unreachable at once: {:?}",
        ev.sandbox
    );
    assert!(
        ev.sandbox.removal_pending,
        "a zero wait reports the deletion as pending: {:?}",
        ev.sandbox
    );
    let dir = ev
        .isolation
        .unwrap()
        .details
        .get("sandboxDir")
        .cloned()
        .unwrap();
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} is unreachable under its name when the run ends"
    );
    // The tombstone goes away in the background.
    let tombstone = std::path::Path::new(&dir).with_file_name(format!(
        ".removing-{}",
        std::path::Path::new(&dir)
            .file_name()
            .unwrap()
            .to_string_lossy()
    ));
    for _ in 0..200 {
        if !tombstone.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was never deleted", tombstone.display());
}

/// The command starts with nothing blocked and nothing ignored, whatever the host's own
/// signal state (this test process ignores `SIGPIPE`, as every Rust program does, has
/// tokio's handlers installed, and may have inherited more ignored signals), for each way
/// its first process is made: in a PID namespace as root it shares the host's memory
/// (`leader.rs`), with a user namespace it is a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_starts_with_default_signal_dispositions() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("SigIgn:") && l != "SigIgn:\t0000000000000000"),
        "the test process ignores SIGPIPE: {status}"
    );
    for containment in [
        Containment::UserNamespace,
        Containment::Auto,
        Containment::PidNamespace,
    ] {
        let Some(b) = forced_backend(containment) else {
            continue;
        };
        let (_, done, events) = run(
            b,
            RunSpec::new(["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]),
        )
        .await;
        assert_eq!(
            done.status,
            RunStatus::Succeeded,
            "{containment:?}: {done:?}"
        );
        assert_eq!(
            stdout(&events),
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
            "{containment:?}"
        );
    }
}

/// The command cannot open the memory, mappings or environment of its namespace's init
/// (G), of G's parent (C) or of the host process, the three that hold the host's memory
/// (as root, C and G share the host's own: `leader.rs`); it finds their host pids through
/// the host's `/proc`, which it sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_cannot_reach_the_memory_of_its_init_its_leader_or_the_host() {
    let host = std::process::id();
    for containment in [Containment::PidNamespace, Containment::UserNamespace] {
        let Some(b) = forced_backend(containment) else {
            continue;
        };
        let script = format!(
            "read -r _ _ _ g _ < /proc/self/stat; read -r _ _ _ c _ < /proc/$g/stat; \
             for p in $g $c {host}; do for f in mem maps environ; do \
             if (exec 3< /proc/$p/$f) 2>/dev/null; then echo \"opened /proc/$p/$f\"; fi; \
             done; done; echo \"checked $g $c\""
        );
        let (_, done, events) = run(b, sh(&script)).await;
        assert_eq!(
            done.status,
            RunStatus::Succeeded,
            "{containment:?}: {done:?}"
        );
        let out = stdout(&events);
        let pids: Vec<u32> = out
            .trim()
            .strip_prefix("checked ")
            .unwrap_or_else(|| panic!("{containment:?}: {out}"))
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(
            pids.len() == 2 && pids[0] != pids[1] && !pids.contains(&host) && pids[0] > 1,
            "{containment:?}: {out}"
        );
    }
}
