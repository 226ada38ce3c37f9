//! SSE fan-out benchmark (issue 8): 100 subscribers on one run that prints 10 MB.
//!
//! ```text
//! sse_fanout [--subscribers N] [--mb N] [--paced-mbps R] [--dir DIR]
//! ```
//!
//! The server side (this process) opens an on-disk `SqliteStore` and the `ProcessBackend`,
//! serves `crownest_http::router` on 127.0.0.1 (axum, in process), creates a run and uploads
//! its archive. It then starts a copy of this binary with `--client`, which opens N
//! `crownest_http::Client::events` streams on the run; once every stream has received its
//! first (replayed) event the client says `ready`, the server starts the run, and each
//! subscriber records, for every event, its receive time minus the event's `at`. So the
//! server's CPU time (`getrusage(RUSAGE_SELF)`) is the engine + store + HTTP alone.
//!
//! The command prints `--mb` MB (10^6 bytes; default 10) of base64 text in 76-column lines,
//! as fast as it can (the worst case for lag), or at `--paced-mbps` MB/s (a chatty build).
//!
//! Output: one `key=value` line (parsed by `scripts/bench-sse.sh`). Lags are in ms, with
//! the millisecond resolution of `at`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crownest_backend_process::{ProcessBackend, ProcessConfig};
use crownest_core::testing::{descriptor_of, tar_gz};
use crownest_core::{LimitOverrides, RunId, RunSpec, RunStatus, Timestamp, WorkspaceRuns};
use crownest_http::{Client, HttpConfig, router};
use crownest_store_sqlite::SqliteStore;
use futures::StreamExt as _;

const TOKEN: &str = "bench-token";

struct ServerArgs {
    subscribers: usize,
    mb: u64,
    paced_mbps: Option<f64>,
    dir: std::path::PathBuf,
}

fn die(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sse_fanout: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return die(format!("runtime: {e}")),
    };
    if args.first().map(String::as_str) == Some("--client") {
        return match rt.block_on(client(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => die(format!("client: {e}")),
        };
    }
    let mut a = ServerArgs {
        subscribers: 100,
        mb: 10,
        paced_mbps: None,
        dir: std::env::temp_dir().join("crownest-bench-sse"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            return die(format!("{flag} needs a value"));
        };
        let ok = match flag.as_str() {
            "--subscribers" => v.parse().map(|n| a.subscribers = n).is_ok(),
            "--mb" => v.parse().map(|n| a.mb = n).is_ok(),
            "--paced-mbps" => v.parse().map(|r| a.paced_mbps = Some(r)).is_ok(),
            "--dir" => {
                a.dir = v.into();
                true
            }
            _ => return die(format!("unknown argument {flag:?}")),
        };
        if !ok {
            return die(format!("bad value {v:?} for {flag}"));
        }
    }
    match rt.block_on(server(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => die(e),
    }
}

/// (user, sys) CPU seconds of this process or its reaped children.
fn rusage(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid `who` and pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// CPU seconds per thread name of this process (`/proc/self/task/*/stat`), largest first.
fn cpu_by_thread() -> Vec<(String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for task in rd.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // comm is in parentheses and may contain spaces: split after the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_owned();
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            // fields[0] is field 3 (state); utime = field 14, stime = field 15.
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
                .sum();
            *by_name.entry(name).or_default() += ticks / tick;
        }
    }
    let mut v: Vec<(String, f64)> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn command(mb: u64, paced_mbps: Option<f64>) -> Vec<String> {
    let chars = mb * 1_000_000 * 76 / 77; // + one newline per 76 chars ≈ mb MB
    let raw = chars / 4 * 3;
    match paced_mbps {
        None => vec![
            "sh".into(),
            "-c".into(),
            format!("head -c {raw} /dev/urandom | base64 -w 76"),
        ],
        Some(rate) => {
            // 64 KiB blocks, sleeping to hold the rate (a build log, not a flood).
            let script = format!(
                "import base64,os,sys,time\n\
                 total={raw}; rate={rate}*1e6; t0=time.time(); done=0\n\
                 while done<total:\n\
                 \x20n=min(49152,total-done); b=base64.encodebytes(os.urandom(n)).decode()\n\
                 \x20sys.stdout.write(''.join(l[:76]+'\\n' if len(l)>76 else l+'\\n' for l in b.split('\\n') if l)); sys.stdout.flush()\n\
                 \x20done+=n; d=t0+done*4/3/rate-time.time()\n\
                 \x20time.sleep(d) if d>0 else None\n"
            );
            vec!["python3".into(), "-c".into(), script]
        }
    }
}

async fn server(a: ServerArgs) -> Result<(), String> {
    let err = |e: crownest_core::Error| e.chain();
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).map_err(|e| e.to_string())?;
    let store = Arc::new(SqliteStore::open(a.dir.join("store")).await.map_err(err)?);
    let backend =
        ProcessBackend::new(ProcessConfig::with_root(a.dir.join("sandboxes"))).map_err(err)?;
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(backend))
        .without_recovery()
        .open()
        .await
        .map_err(err)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // A router offers the process backend only when it is named.
    let app = router(
        engine.clone(),
        HttpConfig::default()
            .with_token(TOKEN)
            .with_backends(["process"]),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("sse_fanout: serve: {e}");
        }
    });

    let spec = RunSpec::new(command(a.mb, a.paced_mbps)).with_limits(LimitOverrides {
        output_bytes_per_stream: Some((a.mb + 1) * 1_100_000),
        ..LimitOverrides::default()
    });
    let run = engine.create(spec).await.map_err(err)?;
    let archive = tar_gz(&[("README", b"bench\n", 0o644)]);
    engine
        .upload_archive(&run.id, &descriptor_of(&archive), archive)
        .await
        .map_err(err)?;

    // Subscribers replay only the last event before the start (their "connected" signal).
    let last_seq = engine.get(&run.id).await.map_err(err)?.next_seq - 1;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "--client",
            &format!("http://{addr}"),
            &run.id.to_string(),
            &last_seq.to_string(),
            &a.subscribers.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the client: {e}"))?;
    let stdout = child.stdout.take().ok_or("no client stdout")?;
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    match tokio::time::timeout(Duration::from_secs(60), line_rx.recv()).await {
        Ok(Some(l)) if l == "ready" => {}
        other => return Err(format!("the client did not get ready: {other:?}")),
    }

    let (u0, s0) = rusage(libc::RUSAGE_SELF);
    let threads0 = cpu_by_thread();
    let started_at = Timestamp::now();
    let t0 = Instant::now();
    engine.start(&run.id).await.map_err(err)?;
    let done = engine.wait(&run.id).await.map_err(err)?;
    let run_wall = t0.elapsed();
    let summary = tokio::time::timeout(Duration::from_secs(600), line_rx.recv())
        .await
        .map_err(|_| "the client did not finish".to_owned())?
        .ok_or("the client exited without a summary")?;
    let all_wall = t0.elapsed();
    let (u1, s1) = rusage(libc::RUSAGE_SELF);
    let threads1 = cpu_by_thread();
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("client failed: {status}"));
    }
    if done.status != RunStatus::Succeeded {
        return Err(format!("run ended {:?}: {:?}", done.status, done.failure));
    }
    let events = engine.evidence(&run.id).await.map_err(err)?.events.count;

    // The client's summary: key=value pairs; delivery window from our start time.
    let kv: std::collections::BTreeMap<&str, &str> = summary
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .collect();
    let get = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let delivered = get("delivered");
    let last_ms = get("last_recv_unix_ms");
    let window_s = ((last_ms - started_at.as_millis() as f64) / 1000.0).max(1e-3);
    let per_thread: Vec<String> = threads1
        .iter()
        .map(|(name, t)| {
            let before = threads0
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |x| x.1);
            (name, t - before)
        })
        .filter(|(_, t)| *t >= 0.01)
        .map(|(n, t)| format!("{}:{t:.2}", n.replace(' ', "_")))
        .collect();
    println!(
        "subscribers={} run_events={events} output_mb={} run_wall_s={:.3} delivery_s={window_s:.3} \
         all_done_s={:.3} events_per_s={:.0} {} server_cpu_user_s={:.2} \
         server_cpu_sys_s={:.2} server_threads={}",
        a.subscribers,
        a.mb,
        run_wall.as_secs_f64(),
        all_wall.as_secs_f64(),
        delivered / window_s,
        summary.trim(),
        u1 - u0,
        s1 - s0,
        per_thread.join(","),
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&a.dir);
    Ok(())
}

/// One subscriber's result.
#[derive(Default)]
struct Seen {
    events: u64,
    max_lag_ms: i64,
    lags: Vec<i64>,
    last_recv_ms: i64,
    terminal: bool,
}

async fn client(args: &[String]) -> Result<(), String> {
    let [url, run, last_seq, n] = args else {
        return Err("usage: --client URL RUN LAST_SEQ N".into());
    };
    let last_seq: u64 = last_seq.parse().map_err(|e| format!("LAST_SEQ: {e}"))?;
    let run = RunId::parse(run).map_err(|e| e.to_string())?;
    let n: usize = n.parse().map_err(|e| format!("N: {e}"))?;
    let client = Client::new(url.clone(), Some(TOKEN.to_owned())).map_err(|e| e.chain())?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut stream = client.events(&run, last_seq.saturating_sub(1));
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut expected = last_seq.max(1);
            while let Some(item) = stream.next().await {
                let e = item.map_err(|e| e.chain())?;
                let now = Timestamp::now().as_millis();
                if e.seq != expected {
                    return Err(format!("seq {} after {}", e.seq, expected - 1));
                }
                expected += 1;
                if e.seq <= last_seq {
                    // Replayed from before the start: not a lag, but "connected".
                    let _ = ready.send(()).await;
                } else {
                    let lag = now - e.at.as_millis();
                    seen.max_lag_ms = seen.max_lag_ms.max(lag);
                    seen.lags.push(lag);
                }
                seen.events += 1;
                seen.last_recv_ms = now;
                if e.kind.is_terminal() {
                    seen.terminal = true;
                }
            }
            Ok::<Seen, String>(seen)
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        if ready_rx.recv().await.is_none() {
            return Err("a subscriber ended before its first event".into());
        }
    }
    let (cu0, cs0) = rusage(libc::RUSAGE_SELF);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.map_err(|e| e.to_string())??);
    }
    let (cu1, cs1) = rusage(libc::RUSAGE_SELF);
    if let Some(i) = all.iter().position(|s| !s.terminal) {
        return Err(format!("subscriber {i} ended without terminal"));
    }
    let counts: std::collections::BTreeSet<u64> = all.iter().map(|s| s.events).collect();
    if counts.len() != 1 {
        return Err(format!(
            "subscribers saw different event counts: {counts:?}"
        ));
    }
    let mut lags: Vec<i64> = all.iter().flat_map(|s| s.lags.iter().copied()).collect();
    lags.sort_unstable();
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let delivered: u64 = all.iter().map(|s| s.events).sum();
    let worst = all.iter().map(|s| s.max_lag_ms).max().unwrap_or(0);
    let last = all.iter().map(|s| s.last_recv_ms).max().unwrap_or(0);
    println!(
        "delivered={delivered} lag_p50_ms={} lag_p99_ms={} lag_max_ms={worst} last_recv_unix_ms={last} \
         client_cpu_user_s={:.2} client_cpu_sys_s={:.2}",
        pct(0.5),
        pct(0.99),
        cu1 - cu0,
        cs1 - cs0,
    );
    Ok(())
}
