//! A run end to end, through the engine: archive, exit codes, spawn failures, env, secrets,
//! cwd, stdin, output, deadlines, cancel, limits and filesystem isolation.

use std::time::Duration;

use super::{BackendHarness, me, run_spec, sample_archive, sandbox_spec, spec_of};
use super::{stderr_of, stdout_of};
use crate::error::Error;
use crate::event::{Event, EventKind, FailureKind, KillReason, OutputStream};
use crate::spec::{LimitOverrides, RunSpec};
use crate::status::RunStatus;
use crate::testing::descriptor_of;

/// `name()` is stable and non-empty; `templates()` lists `python-node`.
pub async fn name_and_templates(h: BackendHarness) {
    let name = h.backend.name().to_owned();
    assert!(!name.is_empty());
    assert_eq!(h.backend.name(), name, "stable name");
    let templates = h.backend.templates().await.unwrap();
    let t = templates
        .iter()
        .find(|t| t.name == "python-node")
        .expect("python-node is listed");
    assert!(t.available, "python-node available here: {:?}", t.reason);
    assert!(
        t.identity.as_ref().is_some_and(|i| !i.facts.is_empty()),
        "available template has an identity"
    );
}

/// `create()` of an unknown template is `InvalidSpec` (field `template`).
pub async fn unknown_template_is_invalid_spec(h: BackendHarness) {
    let err = h
        .backend
        .create(&sandbox_spec("no-such-template", me()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSpec { field, .. } if field == "template"),
        "got {err:?}"
    );
}

/// `materialize` puts the archive's files into `/workspace`.
pub async fn materialize_extracts_the_archive(h: BackendHarness) {
    let (_, done, events) = run_spec(&h, spec_of((h.programs.cat)("hello.txt"))).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events), "hello from the archive\n");
}

/// Exit codes pass through; non-zero fails with `exit_nonzero`.
pub async fn exit_codes_pass_through(h: BackendHarness) {
    for code in [0, 3, 42] {
        let (_, done, events) = run_spec(&h, spec_of((h.programs.exit_with)(code))).await;
        assert_eq!(done.exit_code, Some(code));
        let want = if code == 0 {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        assert_eq!(done.status, want);
        if code != 0 {
            assert_eq!(
                done.failure.as_ref().map(|f| f.kind),
                Some(FailureKind::ExitNonzero)
            );
        }
        match &events.last().unwrap().kind {
            EventKind::Terminal {
                exit_code, status, ..
            } => {
                assert_eq!(*exit_code, Some(code));
                assert_eq!(*status, want);
            }
            other => panic!("last event is not terminal: {other:?}"),
        }
    }
}

/// An unknown program is `spawn_failed`.
pub async fn unknown_program_is_spawn_failed(h: BackendHarness) {
    let (_, done, _) = run_spec(&h, RunSpec::new(["crownest-no-such-program-xyz"])).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::SpawnFailed),
        "{:?}",
        done.failure
    );
}

/// The command sees exactly the spec's env (plus the template's), never the host's.
pub async fn env_is_exactly_the_spec(h: BackendHarness) {
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.print_env)("CROWNEST_CONF")).with_env("CROWNEST_CONF", "value-1"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    // A plain setting is provenance: printed as it is, never masked.
    assert_eq!(stdout_of(&events).trim(), "value-1");
    // A variable of the host process (cargo sets it for tests) must not be inherited.
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        let (_, done, events) =
            run_spec(&h, spec_of((h.programs.print_env)("CARGO_MANIFEST_DIR"))).await;
        assert_eq!(done.status, RunStatus::Succeeded);
        assert_eq!(stdout_of(&events).trim(), "<unset>", "host env leaked");
    }
}

/// A secret reaches the command's environment; its echo is masked in output; the run's
/// events, record and evidence name it and never hold its value.
pub async fn secrets_reach_the_command_and_are_masked(h: BackendHarness) {
    let value = "conf-S3cret-7f1e";
    let (engine, done, events) = run_spec(
        &h,
        spec_of((h.programs.print_env)("CROWNEST_SECRET"))
            .with_env("CROWNEST_PLAIN", "plain-1")
            .with_secret("CROWNEST_SECRET", value),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events).trim(), "***", "the echo is masked");
    assert_eq!(done.secret_names, ["CROWNEST_SECRET"]);
    let evidence = engine.evidence(&done.id).await.unwrap();
    assert_eq!(evidence.secret_names, ["CROWNEST_SECRET"]);
    assert_eq!(
        evidence.env.get("CROWNEST_PLAIN").map(String::as_str),
        Some("plain-1")
    );
    for (what, json) in [
        ("events", serde_json::to_string(&events).unwrap()),
        ("record", serde_json::to_string(&done).unwrap()),
        ("evidence", serde_json::to_string(&evidence).unwrap()),
        ("in-toto", evidence.to_in_toto().to_string()),
    ] {
        assert!(!json.contains(value), "the secret is in the {what}");
    }
    // `***` (not `<unset>`) shows the value arrived. However short, a secret is masked.
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.print_env)("CROWNEST_SECRET")).with_secret("CROWNEST_SECRET", "ab"),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events).trim(), "***");
}

/// `cwd` is a directory inside `/workspace`.
pub async fn cwd_is_inside_the_workspace(h: BackendHarness) {
    let (_, done, events) = run_spec(&h, spec_of((h.programs.print_cwd)()).with_cwd("sub")).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let cwd = stdout_of(&events);
    assert!(cwd.trim_end().ends_with("/sub"), "cwd {cwd:?}");
    assert!(
        cwd.contains("workspace"),
        "cwd {cwd:?} is inside the workspace"
    );
}

/// stdin is closed: reading it returns EOF at once.
pub async fn stdin_is_closed(h: BackendHarness) {
    let (_, done, events) = run_spec(
        &h,
        spec_of((h.programs.read_stdin)()).with_timeout_ms(30_000),
    )
    .await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events).trim(), "0");
}

/// stdout and stderr are streamed as their own events.
pub async fn stdout_and_stderr_are_streamed(h: BackendHarness) {
    let (_, done, events) =
        run_spec(&h, spec_of((h.programs.stdout_stderr)("to-out", "to-err"))).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(stdout_of(&events), "to-out\n");
    assert_eq!(stderr_of(&events), "to-err\n");
    let first_output = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::Stdout(_) | EventKind::Stderr(_)))
        .unwrap();
    let running = events
        .iter()
        .position(|e| {
            matches!(
                e.kind,
                EventKind::Status {
                    status: RunStatus::Running,
                    ..
                }
            )
        })
        .unwrap();
    assert!(
        running < first_output,
        "running is announced before any output"
    );
}

fn kills(events: &[Event]) -> Vec<(Option<String>, Option<String>, KillReason)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Kill {
                signal,
                action,
                reason,
            } => Some((signal.clone(), action.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// A timeout ends the command: SIGTERM first, `failed` / `timed_out`.
pub async fn timeout_ends_the_command_with_the_kill_ladder(h: BackendHarness) {
    let (_, done, events) = tokio::time::timeout(
        Duration::from_secs(60),
        run_spec(
            &h,
            spec_of((h.programs.run_forever)()).with_timeout_ms(1500),
        ),
    )
    .await
    .expect("the timed-out run ends promptly");
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::TimedOut)
    );
    let k = kills(&events);
    assert_eq!(
        k.first().map(|k| (k.0.as_deref(), k.2)),
        Some((Some("SIGTERM"), KillReason::Timeout)),
        "{k:?}"
    );
}

/// A command that ignores SIGTERM still ends on SIGKILL.
pub async fn sigkill_ends_a_command_that_ignores_sigterm(h: BackendHarness) {
    let prog = h
        .programs
        .run_forever_ignoring_term
        .expect("registered with Need::Program");
    let mut spec = spec_of(prog()).with_timeout_ms(2000);
    spec.limits.kill_grace_ms = Some(500);
    let (_, done, events) = run_spec(&h, spec).await;
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::TimedOut)
    );
    let k = kills(&events);
    assert!(
        k.iter().any(|k| k.0.as_deref() == Some("SIGKILL")),
        "SIGKILL rung reached: {k:?}"
    );
    assert!(stdout_of(&events).contains("ready"));
}

/// Cancel while running ends the run `canceled`, after the kill ladder.
pub async fn cancel_while_running(h: BackendHarness) {
    let engine = h.engine().await;
    let run = engine
        .create(spec_of((h.programs.run_forever)()).with_backend(h.backend.name()))
        .await
        .unwrap();
    let archive = sample_archive();
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .unwrap();
    engine.start(&run.id).await.unwrap();
    // Wait until the command printed `ready`.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
        if stdout_of(&events).contains("ready") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "command never became ready: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.cancel(&run.id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), engine.wait(&run.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Canceled);
    let events = engine.list_events(&run.id, 0, 1000).await.unwrap();
    assert!(kills(&events).iter().any(|k| k.2 == KillReason::Cancel));
}

/// A command that dies by a signal is `Signaled`: `failed` / `signaled` with the signal.
pub async fn a_signal_death_is_signaled(h: BackendHarness) {
    let prog = h
        .programs
        .die_by_sigterm
        .expect("registered with Need::Program");
    let (_, done, _) = run_spec(&h, spec_of(prog())).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.signal, Some(15), "{:?}", done.failure);
    assert_eq!(
        done.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::Signaled)
    );
}

/// A cwd that is a file, or does not exist, is `spawn_failed`; nothing runs.
pub async fn a_bad_cwd_is_spawn_failed(h: BackendHarness) {
    for cwd in ["hello.txt", "no/such/dir"] {
        let (_, done, events) = run_spec(&h, spec_of((h.programs.print_cwd)()).with_cwd(cwd)).await;
        assert_eq!(done.status, RunStatus::Failed, "cwd {cwd}");
        assert_eq!(
            done.failure.as_ref().map(|f| f.kind),
            Some(FailureKind::SpawnFailed),
            "cwd {cwd}: {:?}",
            done.failure
        );
        assert_eq!(stdout_of(&events), "", "cwd {cwd}: nothing ran");
    }
}

/// Output over the stored cap is drained to the end and dropped with `output_truncated`;
/// the command is not blocked and its totals count every byte.
pub async fn an_output_flood_is_capped_and_drained(h: BackendHarness) {
    let cap = 64 * 1024;
    let lines = 8 * 1024;
    let spec = spec_of((h.programs.flood)(lines)).with_limits(LimitOverrides {
        output_bytes_per_stream: Some(cap),
        ..LimitOverrides::default()
    });
    let (engine, done, events) = run_spec(&h, spec).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let stored = stdout_of(&events).len() as u64;
    assert_eq!(stored, cap, "the cap is filled exactly");
    let dropped: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::OutputTruncated {
                stream: OutputStream::Stdout,
                bytes_dropped,
            } => Some(*bytes_dropped),
            _ => None,
        })
        .collect();
    assert_eq!(
        dropped,
        vec![lines * 1024 - cap],
        "one output_truncated with every dropped byte"
    );
    assert_eq!(stderr_of(&events), "done\n", "stderr is unaffected");
    let ev = engine.evidence(&done.id).await.unwrap();
    let out = ev.output.expect("output totals");
    assert_eq!(out.stdout.total_bytes, lines * 1024);
    assert_eq!(out.stdout.stored_bytes, cap);
}

/// A command over its memory limit ends `limit_exceeded`, naming memory and the limit.
pub async fn a_memory_hog_ends_limit_exceeded(h: BackendHarness) {
    let limit = 128 * 1024 * 1024;
    let spec = spec_of((h.programs.memory_hog)())
        .with_limits(LimitOverrides {
            memory_bytes: Some(limit),
            ..LimitOverrides::default()
        })
        .with_timeout_ms(60_000);
    let (_, done, events) = run_spec(&h, spec).await;
    assert_eq!(done.status, RunStatus::Failed);
    let failure = done.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::LimitExceeded, "{failure:?}");
    assert!(
        failure.message.contains("memory") && failure.message.contains(&limit.to_string()),
        "the message names memory and the limit: {failure:?}"
    );
    assert!(!stdout_of(&events).contains("survived"));
}

/// A fork bomb meets the pids limit: most forks fail, the run ends, the host is fine.
pub async fn a_fork_bomb_is_contained(h: BackendHarness) {
    let prog = h.programs.fork_bomb.expect("registered with Need::Program");
    let spec = spec_of(prog())
        .with_limits(LimitOverrides {
            pids: Some(64),
            ..LimitOverrides::default()
        })
        .with_timeout_ms(60_000);
    let (_, done, events) = run_spec(&h, spec).await;
    let out = stdout_of(&events);
    let mut nums = out.split_whitespace().map(|n| n.parse::<u32>().unwrap());
    let (ok, failed) = (nums.next().unwrap(), nums.next().unwrap());
    assert!(
        ok < 64,
        "at most pids-limit processes: {ok} forks succeeded"
    );
    assert!(
        failed >= 300,
        "forks beyond the limit fail: {failed} failed"
    );
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    let (_, again, _) = run_spec(&h, spec_of((h.programs.exit_with)(0))).await;
    assert_eq!(again.status, RunStatus::Succeeded, "the next run works");
}

/// A host file outside the workspace cannot be read, by absolute or relative path.
pub async fn host_files_outside_the_workspace_are_unreachable(h: BackendHarness) {
    let content = format!("crownest-host-secret-{}", crate::ids::RunId::new());
    let file = tempfile_with(&content);
    let path = file.to_string_lossy().into_owned();
    let relative = format!("{}{}", "../".repeat(24), path.trim_start_matches('/'));
    for p in [path.as_str(), relative.as_str(), "/etc/shadow"] {
        let (_, done, events) = run_spec(&h, spec_of((h.programs.try_read)(p))).await;
        let _ = std::fs::remove_file(&file);
        assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
        let out = stdout_of(&events);
        assert_eq!(out, "denied\n", "{p} was readable: {out}");
        assert!(!out.contains(&content));
    }
    let _ = std::fs::remove_file(&file);
}

fn tempfile_with(content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "crownest-conformance-host-{}",
        crate::ids::RunId::new()
    ));
    std::fs::write(&path, content).unwrap();
    path
}
