//! `crownest serve`: the HTTP + SSE API ([`crownest_http::router`]) over the store in
//! `--home`.
//!
//! * The engine is opened exactly like the other commands open it: the SQLite store under
//!   `--home`, every backend usable here, recovery first.
//! * Policy: `--backends` lists the backends clients may choose (default: every usable one
//!   but `process`, which is offered only when named); `--max LIMIT=N` and
//!   `--max-concurrent-runs` bound what runs may ask for and how many execute at once.
//! * Security: every route but `/healthz` needs `Authorization: Bearer <token>`: a token of
//!   the tokens file (`--tokens`, default `<home>/tokens.jsonl` when it exists; sha256
//!   hashes with scopes `read`, `submit`, `admin`), or the single admin token
//!   (`$CROWNEST_TOKEN`, `--token-file`, or the discouraged `--token`). A non-loopback
//!   address with neither is refused (exit 2); on loopback, a random admin token is
//!   generated and printed on stderr (`token: ...`).
//! * Once bound, `listening on http://ADDR` goes to stderr (with the real port when
//!   `--listen` says port 0); `https://` with `--tls-cert`/`--tls-key` (rustls, see
//!   `tls.rs`).
//! * Logs (the access log of every request, the engine's warnings) go to stderr through
//!   the `tracing` subscriber (`--log-format text|json`, `$RUST_LOG`, default `info`).
//! * Garbage collection (`crownest gc`'s pass) runs at start-up and every `--gc-interval`
//!   (10 min), so runs idle in `awaiting_archive` past `--awaiting-archive-ttl` (24 h) end
//!   `canceled` with their evidence, and unreferenced blobs and stale transfers go; a pass
//!   that removed something says so on stderr (`crownest: gc: ...`).
//! * `--pool docker:TEMPLATE=N`: the Docker backend keeps N sandboxes of the template
//!   created and started (made with the default limits), each used by one fitting run and
//!   destroyed after it, refilled in the background; `crownest doctor --server` and
//!   `/metrics` show it.
//! * Ctrl-C or SIGTERM: stop accepting connections, cancel the runs this server is driving
//!   (each ends `canceled` with its evidence, so SSE streams end with `terminal`), drain
//!   the warm pools, wait for the runs and the open connections (at most
//!   [`SHUTDOWN_BUDGET`]), exit 0. A second signal
//!   exits at once; what is left is then reclaimed by recovery on the next open.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use crownest_core::store::RunQuery;
use crownest_core::{RunId, RunStatus, WorkspaceRuns};
use crownest_http::HttpConfig;

use crate::cli::ServeArgs;
use crate::exit::{Exit, usage};
use crate::run::Interrupts;
use crate::{home, policy, tokens};

/// How long a shutdown waits for canceled runs and open connections.
pub(crate) const SHUTDOWN_BUDGET: Duration = Duration::from_secs(20);

/// `crownest serve`.
pub(crate) async fn serve(
    home_dir: &Path,
    args: ServeArgs,
    token: Option<String>,
) -> anyhow::Result<Exit> {
    let token = token.filter(|t| !t.is_empty());
    let tokens_path = args
        .tokens
        .clone()
        .unwrap_or_else(|| tokens::default_file(home_dir));
    let tokens = tokens::load(&tokens_path, args.tokens.is_some())?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(args.listen.as_str())
        .await
        .map_err(|e| usage(format!("--listen {}: {e}", args.listen)))?
        .collect();
    if addrs.is_empty() {
        return Err(usage(format!(
            "--listen {}: resolves to no address",
            args.listen
        )));
    }
    let has_tokens = tokens.as_ref().is_some_and(|t| !t.is_empty());
    if token.is_none() && !has_tokens && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(usage(format!(
            "refusing to listen on {} without a token: it is not a loopback address, so \
             anyone who can reach it could run commands here. Give a tokens file (--tokens, \
             see `crownest token add`) or a token ($CROWNEST_TOKEN or --token-file), or \
             listen on 127.0.0.1",
            args.listen
        )));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut interrupts = Interrupts::new()?;
    let mut allowed = Vec::new();
    // The pool's sandboxes are made with the limits runs get by default (after `--max`).
    let pool = {
        let mut probe = crownest_core::EngineConfig::default();
        policy::apply_maxima(&mut probe, &args.max)?;
        home::PoolSettings {
            docker: policy::parse_pools(&args.pool)?,
            limits: probe.defaults,
            head_start: false,
        }
    };
    let engine = home::open_with(home_dir, &pool, home::Readers::Remote, |config, slots| {
        if pool.docker.values().any(|n| *n > 0)
            && let Some(slot) = slots.iter().find(|s| s.name == "docker")
            && let Err(why) = &slot.backend
        {
            return Err(usage(format!(
                "--pool: the docker backend is not usable here: {why}"
            )));
        }
        allowed = policy::allowed_backends(args.backends.as_deref(), slots)?;
        config.default_backend = allowed.first().cloned();
        // A server takes runs any host queued on a shared store (docs/scale-out.md).
        config.claim_from_queue = true;
        if let Some(ttl) = args.awaiting_archive_ttl {
            config.awaiting_archive_ttl = ttl;
        }
        if let Some(n) = args.max_concurrent_runs {
            config.max_concurrent_runs = n as usize;
        }
        if let Some(ttl) = args.lease_ttl {
            config.lease_ttl = ttl;
        }
        policy::apply_maxima(config, &args.max)
    })
    .await?;
    let mut listener = None;
    let mut last_err = None;
    for addr in &addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(listener) = listener else {
        let e = last_err.unwrap_or_else(|| std::io::Error::other("no address"));
        return Err(anyhow::Error::new(e).context(format!("binding {}", args.listen)));
    };
    let local = listener.local_addr().context("reading the bound address")?;
    // Without any token, a loopback server makes one up and prints it.
    let generated = (token.is_none() && !has_tokens).then(HttpConfig::generate_token);
    let key = crate::hostkey::signing_key(home_dir, None)?;
    let public = key.public_key();
    let mut http = HttpConfig::default()
        .with_backends(allowed.iter().cloned())
        .with_signing_key(key);
    if let Some(t) = token.as_ref().or(generated.as_ref()) {
        http = http.with_token(t);
    }
    let token_count = tokens.as_ref().map_or(0, |t| t.entries().len());
    if let Some(set) = tokens {
        http = http.with_tokens(set);
    }
    let app = crownest_http::router(engine.clone(), http);

    if let Some(t) = &generated {
        eprintln!("token: {t}");
    }
    eprintln!("listening on {scheme}://{local}");
    eprintln!(
        "crownest: evidence is signed (?format=dsse) by host key {} (public key {})",
        public.key_id(),
        public.to_hex()
    );
    eprintln!(
        "crownest: backends offered: {} (default {})",
        allowed.join(", "),
        engine.default_backend()
    );
    if token_count > 0 {
        eprintln!(
            "crownest: {token_count} token(s) with scopes from {}",
            tokens_path.display()
        );
    }
    eprintln!(
        "crownest: home {}; try: CROWNEST_TOKEN=... crownest --server {scheme}://{local} runs",
        home_dir.display(),
    );

    for (backend, pools) in engine.pools() {
        for p in pools {
            eprintln!(
                "crownest: warm pool {backend}:{}: {} sandbox(es), filling in the background",
                p.template, p.size
            );
        }
    }
    eprintln!(
        "crownest: gc every {} ms (awaiting_archive TTL {} ms)",
        args.gc_interval.as_millis(),
        engine.config().awaiting_archive_ttl.as_millis()
    );
    let gc = crate::gc::spawn_periodic(&engine, args.gc_interval);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    let server = match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)
                .context("reading the bound address")?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }),
    };
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => {
            // The server ended on its own: an accept error.
            return match r {
                Ok(Ok(())) => Ok(Exit::Success),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("serving")),
                Err(e) => Err(anyhow::anyhow!("the server task failed: {e}")),
            };
        }
        () = interrupts.recv() => {}
    }
    eprintln!("crownest: shutting down (again to exit at once)");
    gc.stop();
    let _ = stop_tx.send(());
    let drained = async {
        cancel_own_runs(&engine).await;
        // Warm pools: their sandboxes go now (a crash leaves them to the next sweep).
        engine.shutdown().await;
        let _ = (&mut server).await;
    };
    tokio::select! {
        r = tokio::time::timeout(SHUTDOWN_BUDGET, drained) => {
            if r.is_err() {
                eprintln!("crownest: shutdown budget spent; exiting with connections open");
            }
        }
        () = interrupts.recv() => {
            eprintln!("crownest: interrupted again: exiting; unfinished runs are left to recovery");
        }
    }
    Ok(Exit::Success)
}

/// Cancels the runs this server's engine drives and waits for each to end.
async fn cancel_own_runs(engine: &WorkspaceRuns) {
    let mut own: Vec<RunId> = Vec::new();
    for status in [RunStatus::Queued, RunStatus::Starting, RunStatus::Running] {
        let Ok(runs) = engine
            .list(&RunQuery {
                status: Some(status),
                limit: 10_000,
                before: None,
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        own.extend(
            runs.into_iter()
                .filter(|r| {
                    r.owner
                        .as_ref()
                        .is_some_and(|o| o.instance == engine.instance())
                })
                .map(|r| r.id),
        );
    }
    for id in &own {
        if let Err(e) = engine.cancel(id).await {
            eprintln!("crownest: canceling run {id}: {}", e.chain());
        }
    }
    for id in &own {
        let _ = engine.wait(id).await;
    }
    if !own.is_empty() {
        eprintln!("crownest: {} running run(s) canceled", own.len());
    }
}
