//! `bench_output [--mode zero|base64] [--mib N] [--wait subscribe|poll]
//! [--store sqlite|memory] [--dir DIR] [--repeat N]`: end-to-end output
//! throughput of the engine (issue 4). A command writes N MiB (default 256) to stdout through
//! `WorkspaceRuns` + `ProcessBackend` + an on-disk `SqliteStore`; the time from `start` to
//! the terminal record is measured and the result is checked: stored bytes == bytes written,
//! offsets contiguous, the hash chain verifies and matches the Evidence Bundle.
//!
//! * `zero`: `head -c N /dev/zero` (NUL bytes: valid UTF-8, stored as text chunks).
//! * `base64`: `head -c 3N/4 /dev/urandom | base64 -w 76` (N MiB of base64 text plus newlines).
//!
//! Prints one `key=value` line per run (parsed by `scripts/bench-output.sh`).
//! "MB" is 10^6 bytes, "MiB" 2^20.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crownest_backend_process::{ProcessBackend, ProcessConfig};
use crownest_core::event::verify_chain;
use crownest_core::{
    ArchiveDescriptor, Event, EventKind, LimitOverrides, MemoryStore, RunSpec, RunStatus,
    Sha256Digest, Store, WorkspaceRuns,
};
use crownest_store_sqlite::SqliteStore;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Zero,
    Base64,
}

struct Args {
    mode: Mode,
    mib: u64,
    dir: std::path::PathBuf,
    repeat: u32,
    wait: Wait,
    store: StoreKind,
}

/// Which store persists the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    /// `SqliteStore` on disk (the CLI default; what the goal is about).
    Sqlite,
    /// `MemoryStore`: the engine + backend ceiling, without the database.
    Memory,
}

/// How the benchmark waits for the terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// `WorkspaceRuns::wait` (a subscriber: it reads every event back from the store).
    Subscribe,
    /// Polls the run record every 10 ms (no reader competing with the writer).
    Poll,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: Mode::Zero,
        mib: 256,
        dir: std::env::temp_dir().join("crownest-bench-output"),
        repeat: 1,
        wait: Wait::Subscribe,
        store: StoreKind::Sqlite,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--mode" => {
                args.mode = match value()?.as_str() {
                    "zero" => Mode::Zero,
                    "base64" => Mode::Base64,
                    m => return Err(format!("unknown mode {m:?} (zero|base64)")),
                }
            }
            "--mib" => args.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--wait" => {
                args.wait = match value()?.as_str() {
                    "subscribe" => Wait::Subscribe,
                    "poll" => Wait::Poll,
                    w => return Err(format!("unknown wait {w:?} (subscribe|poll)")),
                }
            }
            "--store" => {
                args.store = match value()?.as_str() {
                    "sqlite" => StoreKind::Sqlite,
                    "memory" => StoreKind::Memory,
                    w => return Err(format!("unknown store {w:?} (sqlite|memory)")),
                }
            }
            "--dir" => args.dir = value()?.into(),
            "--repeat" => args.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The command and the exact number of bytes it writes to stdout.
fn command(mode: Mode, mib: u64) -> (Vec<String>, u64) {
    let n = mib * MIB;
    match mode {
        Mode::Zero => (
            vec![
                "head".into(),
                "-c".into(),
                n.to_string(),
                "/dev/zero".into(),
            ],
            n,
        ),
        Mode::Base64 => {
            // Random bytes whose base64 is n characters, wrapped at 76 columns.
            let raw = n / 4 * 3;
            let chars = raw.div_ceil(3) * 4;
            let total = chars + chars.div_ceil(76);
            let line = format!("head -c {raw} /dev/urandom | base64 -w 76");
            (vec!["sh".into(), "-c".into(), line], total)
        }
    }
}

/// An empty-ish archive: the benchmark is about output, not intake.
fn archive() -> Result<bytes::Bytes, String> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    let content = b"bench\n";
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, "README", &content[..])
        .map_err(|e| e.to_string())?;
    let gz = builder.into_inner().map_err(|e| e.to_string())?;
    Ok(bytes::Bytes::from(gz.finish().map_err(|e| e.to_string())?))
}

/// (user, sys) CPU time of this process.
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// (user + sys) CPU time of reaped children (the command and its helpers).
fn child_cpu() -> Duration {
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn one_run(args: &Args, round: u32) -> Result<(), String> {
    let err = |e: crownest_core::Error| e.chain();
    let store_dir = args.dir.join(format!("store-{round}"));
    let _ = std::fs::remove_dir_all(&store_dir);
    std::fs::create_dir_all(&store_dir).map_err(|e| e.to_string())?;
    let sqlite = match args.store {
        StoreKind::Sqlite => Some(Arc::new(SqliteStore::open(&store_dir).await.map_err(err)?)),
        StoreKind::Memory => None,
    };
    let store: Arc<dyn Store> = match &sqlite {
        Some(s) => s.clone(),
        None => Arc::new(MemoryStore::new()),
    };
    let backend =
        ProcessBackend::new(ProcessConfig::with_root(args.dir.join("sandboxes"))).map_err(err)?;
    let containment = backend.containment();
    let engine = WorkspaceRuns::builder(store.clone())
        .backend(Arc::new(backend))
        .without_recovery()
        .open()
        .await
        .map_err(err)?;

    let (argv, expected) = command(args.mode, args.mib);
    let spec = RunSpec::new(argv).with_limits(LimitOverrides {
        output_bytes_per_stream: Some((300 * MIB).max(expected + MIB)),
        ..LimitOverrides::default()
    });
    let run = engine.create(spec).await.map_err(err)?;
    let archive = archive()?;
    let desc = ArchiveDescriptor {
        size_bytes: archive.len() as u64,
        sha256: Sha256Digest::of(&archive),
    };
    engine
        .upload_archive(&run.id, &desc, archive)
        .await
        .map_err(err)?;

    let (u0, s0) = cpu_times();
    let c0 = child_cpu();
    let t0 = Instant::now();
    engine.start(&run.id).await.map_err(err)?;
    let done = match args.wait {
        Wait::Subscribe => engine.wait(&run.id).await.map_err(err)?,
        Wait::Poll => loop {
            let r = engine.get(&run.id).await.map_err(err)?;
            if r.status.is_terminal() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        },
    };
    let wall = t0.elapsed();
    let (u1, s1) = cpu_times();
    let c1 = child_cpu();
    if done.status != RunStatus::Succeeded {
        return Err(format!("run ended {:?}: {:?}", done.status, done.failure));
    }

    // Check what was persisted (outside the timed part).
    let mut events: Vec<Event> = Vec::new();
    loop {
        let after = events.last().map_or(0, |e| e.seq);
        let page = engine
            .list_events(&run.id, after, 1000)
            .await
            .map_err(err)?;
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    let mut stored = 0u64;
    let mut chunks = 0u64;
    for e in &events {
        if let EventKind::Stdout(c) = &e.kind {
            if c.offset != stored {
                return Err(format!("seq {}: offset {} != {stored}", e.seq, c.offset));
            }
            stored += c.len();
            chunks += 1;
        }
    }
    if stored != expected {
        return Err(format!(
            "stored {stored} bytes, the command wrote {expected}"
        ));
    }
    let summary = verify_chain(&run.id, &events).map_err(|e| e.to_string())?;
    let evidence = engine.evidence(&run.id).await.map_err(err)?;
    if evidence.events != summary {
        return Err(format!(
            "evidence {:?} != chain {:?}",
            evidence.events, summary
        ));
    }
    let exec_ms = match (
        done.timestamps.command_started,
        done.timestamps.command_ended,
    ) {
        (Some(a), Some(b)) => b.millis_since(a),
        _ => 0,
    };
    let writes = match &sqlite {
        Some(s) => {
            let stats = s.write_stats();
            s.close().await;
            format!(
                "sqlite_txns={} sqlite_writes={}",
                stats.transactions, stats.writes
            )
        }
        None => "sqlite_txns=0 sqlite_writes=0".to_owned(),
    };
    let db_bytes = dir_bytes(&store_dir);
    let secs = wall.as_secs_f64();
    println!(
        "store={:?} mode={:?} wait={:?} bytes={stored} events={} stdout_events={chunks} wall_s={secs:.3} mb_per_s={:.1} mib_per_s={:.1} \
         exec_ms={exec_ms} cpu_user_s={:.2} cpu_sys_s={:.2} child_cpu_s={:.2} peak_rss_mib={} store_mib={} \
         {writes} containment={containment} chain=ok",
        args.store,
        args.mode,
        args.wait,
        events.len(),
        stored as f64 / 1e6 / secs,
        stored as f64 / MIB as f64 / secs,
        (u1 - u0).as_secs_f64(),
        (s1 - s0).as_secs_f64(),
        (c1 - c0).as_secs_f64(),
        peak_rss_mib(),
        db_bytes / MIB,
    );
    drop(events);
    let _ = std::fs::remove_dir_all(&store_dir);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_output: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_output: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    for round in 0..args.repeat.max(1) {
        if let Err(e) = rt.block_on(one_run(&args, round)) {
            eprintln!("bench_output: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
