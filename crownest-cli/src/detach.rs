//! `crownest run --detach` on the local store: the run is driven by a background
//! `crownest` process (the engine that creates a run is the one that drives it and holds its
//! secrets), started in its own process group so Ctrl-C in the terminal does not reach it
//! (it still shares the terminal's session: `nohup` or `setsid` if the terminal will close).
//!
//! This process re-runs itself with the same arguments minus `--detach`, plus a hidden
//! `--report-id-to FILE`; the child writes `id <run>` once the run exists and `started` once
//! it started. This process prints the run id when the run has started and returns 0; if the
//! child ends first (a refused archive, a usage error), its log is printed and its exit code
//! returned. The child's output goes to `<home>/detached/<run>.log`.

use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;

use crate::exit::Exit;

/// Starts the background driver and waits until its run has started.
pub(crate) async fn detach(home: &Path) -> anyhow::Result<Exit> {
    let dir = home.join("detached");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = tempfile::Builder::new()
        .prefix(".report-")
        .tempfile_in(&dir)
        .context("creating the report file")?
        .into_temp_path();
    let log = tempfile::Builder::new()
        .prefix("run-")
        .suffix(".log")
        .tempfile_in(&dir)
        .context("creating the log file")?;
    let (log_file, log_path) = log.keep().context("keeping the log file")?;
    let exe = std::env::current_exe().context("locating the crownest binary")?;
    // Drop `--detach` from crownest's own options only: the command after `--` is the
    // user's and is passed on untouched (`-- docker run --detach img` stays as it is).
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut in_command = false;
    for a in std::env::args_os().skip(1) {
        if !in_command && a == "--detach" {
            continue;
        }
        in_command |= a == "--";
        args.push(a);
    }
    let mut cmd = std::process::Command::new(exe);
    // Options go before `run`'s trailing `-- COMMAND`: insert them right after `run`.
    let run_at = args.iter().position(|a| a == "run").unwrap_or(0);
    cmd.args(&args[..=run_at])
        .arg("--report-id-to")
        .arg(&*report)
        .args(&args[run_at + 1..])
        .env("CROWNEST_HOME", home)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log file")?)
        .stderr(log_file);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting the background run")?;
    loop {
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("id "))
            .map(str::to_owned);
        if let Some(id) = &id
            && text.lines().any(|l| l == "started")
        {
            let named = dir.join(format!("{id}.log"));
            let shown = match std::fs::rename(&log_path, &named) {
                Ok(()) => named,
                Err(_) => log_path.clone(),
            };
            println!("{id}");
            crate::term::note!(
                "crownest: run {id} started in the background (output: {}); follow it with \
                 `crownest{} logs {id} --follow`",
                shown.display(),
                crate::run::global_flags()
            );
            return Ok(Exit::Success);
        }
        if let Some(status) = child.try_wait().context("waiting for the background run")? {
            let mut out = String::new();
            let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut out));
            eprint!("{out}");
            let _ = std::fs::remove_file(&log_path);
            return Ok(match status.code() {
                Some(0) => Exit::Success,
                Some(2) => Exit::Rejected,
                Some(130) => Exit::Canceled,
                _ => Exit::Failure,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
