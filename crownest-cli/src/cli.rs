//! The command line (clap derive). `docs/cli.md` is the reference; keep both in step.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `0.1.0 (commit 1a2b3c4d5e6f, built 2026-12-06)`: what `--version` prints (build.rs).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CROWNEST_COMMIT"),
    ", built ",
    env!("CROWNEST_BUILD_DATE"),
    ")"
);

/// Run repo-shaped archives in sandboxes, with a durable, verifiable record.
///
/// Exit codes: 0 succeeded, 1 failed, 2 usage error or rejected input, 130 canceled.
#[derive(Debug, Parser)]
#[command(name = "crownest", version = VERSION, about, long_about = None)]
pub(crate) struct Cli {
    /// Where runs, events, archives and artifacts are kept [default: $CROWNEST_HOME, else the
    /// platform data dir, e.g. ~/.local/share/crownest].
    #[arg(long, global = true, value_name = "DIR", env = "CROWNEST_HOME")]
    pub(crate) home: Option<PathBuf>,
    /// The store: the home's own SQLite store (the default), or a PostgreSQL server shared by
    /// several hosts, e.g. postgres://crownest@db.internal/crownest (docs/scale-out.md).
    #[arg(long, global = true, value_name = "URL", env = "CROWNEST_STORE")]
    pub(crate) store: Option<String>,
    /// With a PostgreSQL --store: where archive and artifact bytes are kept, a directory or
    /// a URL (file:///shared/dir; s3://, gs://, az:// in builds with those features). Hosts
    /// sharing a store must share it too [default: <home>/blobs, for one host].
    #[arg(long, global = true, value_name = "DIR|URL", env = "CROWNEST_BLOBS")]
    pub(crate) blobs: Option<String>,
    /// Send every command to this server (`crownest serve`, or any host mounting the API)
    /// instead of the local store, e.g. http://127.0.0.1:7700.
    #[arg(long, global = true, value_name = "URL", env = "CROWNEST_SERVER")]
    pub(crate) server: Option<String>,
    /// Bearer token: the one `--server` sends, or the admin token `serve` accepts.
    /// Discouraged: every user sees argv (`ps`); prefer $CROWNEST_TOKEN or --token-file.
    #[arg(long, global = true, value_name = "T", conflicts_with = "token_file")]
    pub(crate) token: Option<String>,
    /// Read the bearer token from FILE (its first line) [default: $CROWNEST_TOKEN].
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Trust the CA certificate(s) in this PEM file for an https --server (a private CA,
    /// or the server's self-signed certificate), besides the built-in web roots.
    #[arg(long, global = true, value_name = "PEM", env = "CROWNEST_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Log lines on stderr as text or as JSON objects (one per line). The level is
    /// $RUST_LOG (e.g. info, crownest=debug) [default: info for serve, warn otherwise].
    #[arg(long, global = true, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text, env = "CROWNEST_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    /// Print only errors and what was asked for: no progress bars, hints or notes.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// More log detail when $RUST_LOG is not set: -v info, -vv debug, -vvv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Colour on stderr: auto (a terminal, and NO_COLOR unset), always, never.
    #[arg(long, global = true, value_name = "WHEN", value_enum, default_value_t = ColorChoice::Auto)]
    pub(crate) color: ColorChoice,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorChoice {
    /// When stderr is a terminal and NO_COLOR is unset or empty.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run COMMAND on SOURCE (a .tar.gz/.tgz, or a directory packed deterministically).
    Run(Box<RunArgs>),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Print one run's record as JSON.
    Show(RunRef),
    /// Print a run's events as JSON lines.
    Events(EventsArgs),
    /// Print the raw bytes of a run's output streams (stdout to stdout, stderr to stderr).
    Logs(LogsArgs),
    /// Print a run's Evidence Bundle (JSON).
    Evidence(EvidenceArgs),
    /// Verify a run's event chain and artifact digests (stored, or offline from files).
    Verify(VerifyArgs),
    /// Write a run's artifacts under a directory.
    Artifacts(ArtifactsArgs),
    /// Export everything an offline verifier needs (events, evidence, its signed envelope,
    /// the public key, the artifacts) into a directory (format: docs/evidence.md).
    Export(ArtifactsArgs),
    /// Print the public key that signs evidence (hex; --pem: SubjectPublicKeyInfo PEM).
    HostKey(HostKeyArgs),
    /// Cancel a run (also one that `crownest run` drives in another process).
    Cancel(RunRef),
    /// Delete an ended run for good: its record, events, Evidence Bundle and artifact
    /// records (export what must be kept first; blobs go at the next gc).
    #[command(visible_alias = "rm")]
    Delete(RunRef),
    /// Which backends and templates are usable here, and why not (with --server: whether
    /// the server answers and accepts the token).
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, or write one page per command into --out DIR.
    Man(ManArgs),
    /// Make the docker or wasm backend usable: build the python-node image from Debian
    /// packages, or fetch the pinned WASI modules (the recipes are in this binary).
    Setup(SetupArgs),
    /// List every backend's templates, whether each is usable here, and the interpreter
    /// versions it resolves to (register your own in <home>/templates.json).
    Templates(TemplatesArgs),
    /// Serve the HTTP + SSE API over the store in --home (Ctrl-C or SIGTERM stops it).
    Serve(ServeArgs),
    /// Collect garbage in --home once: expire runs idle in awaiting_archive past their TTL,
    /// discard unusable staged transfers, delete unreferenced blobs and stale temp files.
    Gc(GcArgs),
    /// Manage the tokens a `serve` accepts (a tokens file of sha256 hashes with scopes).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `token`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token, print it once on stdout, and append its hash and scopes to the file.
    Add(TokenAddArgs),
    /// List the tokens of the file: name and scopes (the tokens themselves are not kept).
    List(TokenListArgs),
}

/// `token add`.
#[derive(Debug, Args)]
pub(crate) struct TokenAddArgs {
    /// A name for the token ([A-Za-z0-9._-], unique in the file).
    pub(crate) name: String,
    /// What it may do: read, submit, admin (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true)]
    pub(crate) scopes: Vec<String>,
    /// The tokens file [default: <home>/tokens.jsonl].
    #[arg(long, value_name = "FILE")]
    pub(crate) tokens: Option<PathBuf>,
}

/// `token list`.
#[derive(Debug, Args)]
pub(crate) struct TokenListArgs {
    /// The tokens file [default: <home>/tokens.jsonl].
    #[arg(long, value_name = "FILE")]
    pub(crate) tokens: Option<PathBuf>,
}

/// `completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// `man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write crownest.1 and crownest-<command>.1 into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
}

/// `setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// What to set up.
    #[arg(value_enum)]
    pub(crate) target: SetupTarget,
    /// Ignore the caches and build or fetch again.
    #[arg(long)]
    pub(crate) force: bool,
    /// How to build the Docker image: `debootstrap` (Debian packages, no registry; needs root,
    /// debootstrap or apt-get, a Debian mirror in the apt sources) or `dockerfile` (`docker
    /// build` from the base image debian:<suite>-slim, which must be on this host or
    /// pullable) [default: debootstrap where it can run, else dockerfile, with a note].
    #[arg(long, value_enum, value_name = "METHOD")]
    pub(crate) method: Option<SetupMethod>,
}

/// How `setup docker` builds the image.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum SetupMethod {
    /// debootstrap + docker import, from the Debian mirror of the apt sources.
    Debootstrap,
    /// docker build of the Dockerfile from a Debian base image.
    Dockerfile,
}

/// What `setup` makes usable.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum SetupTarget {
    /// The Docker backend's python-node image.
    Docker,
    /// The WASI backend's modules.
    Wasm,
    /// Both.
    All,
}

/// `templates`.
#[derive(Debug, Args)]
pub(crate) struct TemplatesArgs {
    /// Print JSON (backend, reason, templates with availability and identity).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `gc`.
#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// Print what was removed as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// End runs still in awaiting_archive this long after their creation [default: 24h].
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    pub(crate) awaiting_archive_ttl: Option<Duration>,
}

/// `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks a free one). A non-loopback address requires
    /// --token; on loopback a token is generated and printed when none is given.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    pub(crate) listen: String,
    /// Serve https with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Collect garbage (as `crownest gc` does) at start-up and then this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    pub(crate) gc_interval: Duration,
    /// End runs still in awaiting_archive this long after their creation [default: 24h].
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    pub(crate) awaiting_archive_ttl: Option<Duration>,
    /// The backends clients may choose, comma-separated; the first is the default for a
    /// run that names none [default: every usable backend but process]. `process` runs
    /// commands as host processes of this server's user: it is offered only when named.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) backends: Option<Vec<String>>,
    /// Tokens with scopes (JSON lines of name, sha256, scopes; see `crownest token add`)
    /// [default: <home>/tokens.jsonl when it exists].
    #[arg(long, value_name = "FILE")]
    pub(crate) tokens: Option<PathBuf>,
    /// Runs executing at once; more wait in `queued` [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_concurrent_runs: Option<u32>,
    /// With a PostgreSQL --store: how long this server's lease lasts without renewal
    /// (renewed every third of it); a server that stops renewing has its runs failed by
    /// another within about 4/3 of it [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) lease_ttl: Option<Duration>,
    /// Lower (or raise) the most a run may ask for, one limit of the `limits` object each,
    /// e.g. --max timeoutMs=1800000 --max memoryBytes=4294967296; repeatable. A default
    /// above the new maximum is lowered to it.
    #[arg(long = "max", value_name = "LIMIT=N")]
    pub(crate) max: Vec<String>,
    /// Keep N sandboxes of a template created, hardened and started ahead of their runs
    /// (a warm pool; docker only), e.g. --pool docker:python-node=4; repeatable. Each is
    /// used by one run (whose network and memory/pids/open-files limits are the defaults)
    /// and destroyed after it; the pool refills in the background and is drained at
    /// shutdown.
    #[arg(long = "pool", value_name = "BACKEND:TEMPLATE=N")]
    pub(crate) pool: Vec<String>,
}

/// `run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// A .tar.gz / .tgz file, or a directory (packed: sorted paths, mtime 0, uid/gid 0,
    /// permission bits kept; regular files, directories and symlinks; .git and what the
    /// tree's .gitignore / .crownestignore files exclude are left out, and listed).
    pub(crate) source: PathBuf,
    /// Pack the directory whole: no .git exclusion, no .gitignore / .crownestignore.
    #[arg(long)]
    pub(crate) no_ignore: bool,
    /// Backend: process, docker, wasm [default: process].
    #[arg(long, value_name = "B")]
    pub(crate) backend: Option<String>,
    /// Template (environment).
    #[arg(long, value_name = "T", default_value = "python-node")]
    pub(crate) template: String,
    /// Collect this path (relative to the workspace) after the command; repeatable.
    #[arg(long = "artifact", value_name = "PATH")]
    pub(crate) artifacts: Vec<String>,
    /// Like --artifact, but the run fails if it cannot be collected; repeatable.
    #[arg(long = "required-artifact", value_name = "PATH")]
    pub(crate) required_artifacts: Vec<String>,
    /// Execution deadline, e.g. 30s, 500ms, 2m, 1h (a bare number is seconds) [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Set a plain variable (K=V), or pass one from this environment (K); repeatable.
    /// Nothing else is inherited. Plain values are recorded in the run and its evidence and
    /// never masked: use --secret for tokens and keys.
    #[arg(long = "env", value_name = "K=V")]
    pub(crate) env: Vec<String>,
    /// Pass this environment's variable K to the command as a secret: masked as *** in the
    /// output (an accidental-echo guard only), never stored; only the name is recorded.
    /// Repeatable. The value is never taken from the command line.
    #[arg(long = "secret", value_name = "K")]
    pub(crate) secrets: Vec<String>,
    /// A secret K whose value is the content of the file PATH (one trailing newline
    /// stripped); repeatable.
    #[arg(long = "secret-file", value_name = "K=PATH")]
    pub(crate) secret_files: Vec<String>,
    /// Keep the sandbox this long after the run (e.g. 10m), for inspection.
    #[arg(long, value_name = "TTL", value_parser = parse_duration)]
    pub(crate) keep_sandbox: Option<Duration>,
    /// Declared sha256 of the archive (checked while uploading) [default: computed].
    #[arg(long, value_name = "HEX", requires = "size_bytes")]
    pub(crate) sha256: Option<String>,
    /// Declared size of the archive in bytes [default: computed].
    #[arg(long, value_name = "N", requires = "sha256")]
    pub(crate) size_bytes: Option<u64>,
    /// Print every event as one JSON line on stdout instead of the command's output.
    #[arg(long)]
    pub(crate) json: bool,
    /// Working directory inside the workspace.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) cwd: String,
    /// A label K=V for the host application, copied into the evidence; repeatable. Keys
    /// and values are any UTF-8 text.
    #[arg(long = "label", value_name = "K=V")]
    pub(crate) labels: Vec<String>,
    /// Network access for the command: none (default) or enabled.
    #[arg(long, value_name = "MODE", value_parser = ["none", "enabled"])]
    pub(crate) network: Option<String>,
    /// Creating twice with this key returns the first run (a retried `run` does not run
    /// the command twice).
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,
    /// Memory limit of the command, e.g. 512M, 2G (bytes without a suffix).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) memory: Option<u64>,
    /// Stored output per stream, e.g. 1M; more is dropped (counted and digested).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) output_limit: Option<u64>,
    /// Most processes the command may have.
    #[arg(long, value_name = "N")]
    pub(crate) pids: Option<u64>,
    /// Most files each process of the command may have open (RLIMIT_NOFILE) [default: 4096].
    #[arg(long, value_name = "N")]
    pub(crate) open_files: Option<u64>,
    /// How long a command being stopped (timeout, cancel) gets between SIGTERM and SIGKILL,
    /// e.g. 5s, 500ms [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) kill_grace: Option<Duration>,
    /// Exit with the command's own exit code (as `docker run` does) instead of 1 for a
    /// failed run; a command killed by a signal exits 128 + the signal.
    #[arg(long)]
    pub(crate) propagate_exit_code: bool,
    /// Print the run id and return once the run is started; the run goes on (with
    /// `--server`, on the server; locally, in a background `crownest` process).
    #[arg(long, conflicts_with = "json")]
    pub(crate) detach: bool,
    /// Internal: write the run id to this file once it exists (used by --detach).
    #[arg(long, hide = true, value_name = "FILE")]
    pub(crate) report_id_to: Option<PathBuf>,
    /// The command (argv) to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// `runs`.
#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    /// Only runs in this state (awaiting_archive, running, succeeded, failed, canceled, ...).
    #[arg(long, value_name = "S")]
    pub(crate) status: Option<String>,
    /// Only runs on this backend.
    #[arg(long, value_name = "B")]
    pub(crate) backend: Option<String>,
    /// Only runs with this label K=V; repeatable (every one must match).
    #[arg(long = "label", value_name = "K=V")]
    pub(crate) labels: Vec<String>,
    /// Only runs created at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or a
    /// duration ago (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Only runs created before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub(crate) until: Option<String>,
    /// At most N runs.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) limit: usize,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A command taking one run id.
#[derive(Debug, Args)]
pub(crate) struct RunRef {
    /// The run id (run_...).
    pub(crate) run: String,
}

/// `events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// The run id.
    pub(crate) run: String,
    /// Only events with a greater seq.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) after_seq: u64,
    /// At most N events.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
    /// Keep following live events until the run ends.
    #[arg(long)]
    pub(crate) follow: bool,
}

/// `evidence`.
#[derive(Debug, Args)]
pub(crate) struct EvidenceArgs {
    /// The run id.
    pub(crate) run: String,
    /// Print the in-toto Statement (SLSA Provenance v1 predicate) view instead.
    #[arg(long)]
    pub(crate) in_toto: bool,
    /// Print the in-toto Statement in a DSSE envelope signed with the host key (ed25519;
    /// `<home>/host-key.ed25519`, created on first use; with --server, the server's key).
    #[arg(long, conflicts_with = "in_toto")]
    pub(crate) dsse: bool,
    /// With --dsse: sign with the key in FILE (64 hex digits, mode 0600) instead.
    #[arg(long, value_name = "FILE", requires = "dsse")]
    pub(crate) key: Option<PathBuf>,
}

/// `verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// A stored run to verify (events, evidence, and the artifact blobs re-hashed).
    #[arg(required_unless_present_any = ["evidence", "dsse"], conflicts_with_all = ["evidence", "events"])]
    pub(crate) run: Option<String>,
    /// Offline: an Evidence Bundle exported with `crownest evidence RUN` (or `export`).
    #[arg(long, value_name = "FILE", requires = "events")]
    pub(crate) evidence: Option<PathBuf>,
    /// Offline: the run's events exported with `crownest events RUN` (JSON lines).
    #[arg(long, value_name = "FILE", requires = "evidence")]
    pub(crate) events: Option<PathBuf>,
    /// A DSSE envelope from `crownest evidence RUN --dsse`: its signature is checked and,
    /// with a RUN or --evidence, its statement must be that bundle's in-toto view.
    #[arg(long, value_name = "FILE")]
    pub(crate) dsse: Option<PathBuf>,
    /// With --dsse: the signer's public key, 64 hex digits or a PEM PUBLIC KEY block, or a
    /// file holding either [default: the server's with --server, else the host key in
    /// --home].
    #[arg(long, value_name = "KEY", requires = "dsse")]
    pub(crate) public_key: Option<String>,
}

/// `logs`.
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The run id.
    pub(crate) run: String,
    /// Only standard output.
    #[arg(long, conflicts_with = "stderr")]
    pub(crate) stdout: bool,
    /// Only standard error (printed to stdout, so it can be piped).
    #[arg(long)]
    pub(crate) stderr: bool,
    /// Keep printing output as it comes until the run ends.
    #[arg(long)]
    pub(crate) follow: bool,
}

/// `host-key`.
#[derive(Debug, Args)]
pub(crate) struct HostKeyArgs {
    /// Print the key as a PEM PUBLIC KEY block (SubjectPublicKeyInfo, RFC 8410) instead of
    /// 64 hex digits.
    #[arg(long)]
    pub(crate) pem: bool,
}

/// `artifacts`.
#[derive(Debug, Args)]
pub(crate) struct ArtifactsArgs {
    /// The run id.
    pub(crate) run: String,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
}

/// `doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `30s`, `500ms`, `2m`, `1h`, `1d`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // One number and a unit (`30s`, `1.5s`, `500ms`, a bare number of seconds), or any
    // humantime duration (`1h30m`, `2m 5s`).
    let d = match simple_duration(s) {
        Some(d) => d,
        None => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 500ms, 2m or 1h30m: {e}"))?,
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(1_000_000_000) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(d)
}

fn simple_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let factor_ms = match unit.trim() {
        "ms" => 1.0,
        "" | "s" | "sec" | "secs" => 1_000.0,
        "m" | "min" | "mins" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = value * factor_ms;
    (ms.is_finite() && (0.0..=1e15).contains(&ms)).then(|| Duration::from_millis(ms.round() as u64))
}

/// `512M`, `2G`, `64K`, `1000` (bytes): binary units (K = 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 2G"))?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m 5s"), Ok(Duration::from_secs(125)));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
