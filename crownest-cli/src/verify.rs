//! `crownest verify`: proves that a run's record is intact.
//!
//! Both modes check, from the Evidence Bundle and the full event list:
//!
//! 1. the hash chain: seqs gap-free from 1, every hash recomputed, `terminal` last, count and
//!    head equal to what the bundle recorded, and the last event equal to the bundle's
//!    terminal event (so no event was dropped, reordered, duplicated or edited);
//! 2. the bundle against the chain: its status, exit code, signal and failure equal the
//!    terminal event's, and its artifact list (ids, paths, sizes, sha256) equals the
//!    `artifact_collected` events', in order (so an edited digest in the bundle is caught);
//! 3. for a stored run only: every artifact blob is re-read from the store (with
//!    `--server`: fetched from the server) and re-hashed, and its size and sha256 must match.
//!    With `--server`, checks 1 and 2 also run here, on the events and bundle fetched: the
//!    server is not trusted to have verified anything.
//!
//! With `--dsse FILE` (an envelope from `crownest evidence RUN --dsse`), the envelope's
//! ed25519 signature is checked against `--public-key` (else the server's key with
//! `--server`, else the host key in `--home`); alone, that is the whole check; with a RUN or
//! `--evidence`, the signed statement must also equal that bundle's in-toto view, so the
//! signature covers the bundle checked above.
//!
//! Both evidence layouts verify: `crownest.evidence/v1.1` (plain `env` and `secretNames`) and
//! `crownest.evidence/v1`, written by earlier versions (`envNames` with salted hashes and
//! `envSalt`, read back unchanged so their DSSE signatures still hold); a bundle whose env
//! fields do not match its schema is a problem.
//!
//! Exit 0 when everything holds, 1 on any mismatch (each is printed on stderr), 2 when the
//! run or a file does not exist or a file is not an evidence bundle at all.

use std::io::{BufRead as _, Read as _};
use std::path::Path;

use anyhow::Context as _;
use crownest_core::evidence::EvidenceArtifact;
use crownest_core::signing::DsseEnvelope;
use crownest_core::{Error, Event, EventKind, EvidenceBundle, Sha256Digest};
use sha2::{Digest as _, Sha256};

use crate::cli::VerifyArgs;
use crate::connection::{Connection, Target};
use crate::exit::{Exit, usage};
use crate::inspect::run_id;

/// `crownest verify`.
pub(crate) async fn verify(target: &Target, args: VerifyArgs) -> anyhow::Result<Exit> {
    let envelope = match &args.dsse {
        Some(path) => Some(read_envelope(path)?),
        None => None,
    };
    if let (None, None, Some(envelope)) = (&args.run, &args.evidence, &envelope) {
        let key = crate::hostkey::verifying_key(target, args.public_key.as_deref()).await?;
        return match envelope.verify(&key) {
            Ok(statement) => {
                let meta = &statement["predicate"]["runDetails"]["metadata"];
                println!(
                    "ok: DSSE signature by key {}: in-toto statement for run {}, {} subject(s)",
                    key.key_id(),
                    meta["invocationId"].as_str().unwrap_or("?"),
                    statement["subject"].as_array().map_or(0, Vec::len)
                );
                Ok(Exit::Success)
            }
            Err(e) => {
                eprintln!("crownest: verify: signature: {e}");
                eprintln!("crownest: verify: FAILED (the envelope's signature does not hold)");
                Ok(Exit::Failure)
            }
        };
    }
    let (bundle, events, problems_so_far, conn) = match (&args.run, &args.evidence, &args.events) {
        (Some(run), _, _) => {
            let id = run_id(run)?;
            let conn = target.open().await?;
            conn.get(&id).await?;
            let bundle = conn.evidence(&id).await?;
            let events = conn.all_events(&id).await?;
            (bundle, events, Vec::new(), Some(conn))
        }
        (None, Some(evidence), Some(events)) => {
            let bundle = read_bundle(evidence)?;
            let (events, problems) = read_events(events)?;
            (bundle, events, problems, None)
        }
        _ => return Err(usage("give a RUN, or --evidence FILE and --events FILE")),
    };
    let mut problems = problems_so_far;
    problems.extend(check(&bundle, &events));
    let mut signed_by = None;
    if let Some(envelope) = &envelope {
        let key = crate::hostkey::verifying_key(target, args.public_key.as_deref()).await?;
        match envelope.verify(&key) {
            Ok(statement) if statement == bundle.to_in_toto() => signed_by = Some(key.key_id()),
            Ok(_) => problems.push(
                "the DSSE envelope's signature holds, but its statement is not this bundle's \
                 in-toto view"
                    .into(),
            ),
            Err(e) => problems.push(format!("DSSE signature: {e}")),
        }
    }
    let mut rehashed = 0;
    if let Some(conn) = &conn {
        for a in &bundle.artifacts {
            match rehash(conn, a).await {
                Ok(()) => rehashed += 1,
                Err(p) => problems.push(p),
            }
        }
    }
    if problems.is_empty() {
        println!(
            "ok: run {} {}: {} events, chain head {}, {} artifact(s){}",
            bundle.run_id,
            bundle.status,
            bundle.events.count,
            bundle.events.chain_head,
            bundle.artifacts.len(),
            if args.run.is_some() {
                format!(", {rehashed} blob(s) re-hashed")
            } else {
                String::new()
            }
        );
        if let Some(key_id) = signed_by {
            println!("ok: DSSE signature by key {key_id} over this bundle's in-toto view");
        }
        Ok(Exit::Success)
    } else {
        for p in &problems {
            eprintln!("crownest: verify: {p}");
        }
        eprintln!(
            "crownest: verify: FAILED for run {} ({} problem(s))",
            bundle.run_id,
            problems.len()
        );
        Ok(Exit::Failure)
    }
}

fn read_envelope(path: &Path) -> anyhow::Result<DsseEnvelope> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--dsse {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        usage(format!(
            "--dsse {}: not a DSSE envelope: {e}",
            path.display()
        ))
    })
}

fn read_bundle(path: &Path) -> anyhow::Result<EvidenceBundle> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    let bundle: EvidenceBundle = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{} is not an Evidence Bundle: {e}", path.display())))?;
    Ok(bundle)
}

/// Reads JSON lines; a line that does not parse as an event is a problem (it was edited),
/// not a usage error.
fn read_events(path: &Path) -> anyhow::Result<(Vec<Event>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(ev) => events.push(ev),
            Err(e) => problems.push(format!(
                "{} line {}: not a valid event: {e}",
                path.display(),
                i + 1
            )),
        }
    }
    Ok((events, problems))
}

/// Checks 1 and 2 of the module docs; returns every problem found.
pub(crate) fn check(bundle: &EvidenceBundle, events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    // Bundles written before secrets were split from env (`crownest.evidence/v1`) verify
    // under the same rules: only their env fields differ.
    if let Some(problem) = bundle.schema_problem() {
        problems.push(problem);
    }
    if let Err(e) = bundle.verify_events(events) {
        problems.push(format!("event chain: {e}"));
    }
    match &bundle.terminal_event.kind {
        EventKind::Terminal {
            status,
            exit_code,
            signal,
            failure,
            ..
        } => {
            if *status != bundle.status
                || *exit_code != bundle.exit_code
                || *signal != bundle.signal
                || *failure != bundle.failure
            {
                problems.push(format!(
                    "evidence says {} (exit {:?}), its terminal event says {status} (exit {exit_code:?})",
                    bundle.status, bundle.exit_code
                ));
            }
        }
        other => problems.push(format!(
            "evidence's terminal event is a {} event",
            other.type_name()
        )),
    }
    let collected: Vec<EvidenceArtifact> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ArtifactCollected {
                artifact_id,
                path,
                size_bytes,
                sha256,
                skipped,
                ..
            } => Some(EvidenceArtifact {
                artifact_id: artifact_id.clone(),
                path: path.clone(),
                size_bytes: *size_bytes,
                sha256: sha256.clone(),
                skipped: skipped.clone(),
            }),
            _ => None,
        })
        .collect();
    if collected.len() != bundle.artifacts.len() {
        problems.push(format!(
            "evidence lists {} artifact(s), the events record {}",
            bundle.artifacts.len(),
            collected.len()
        ));
    }
    for (ev, rec) in collected.iter().zip(&bundle.artifacts) {
        if ev != rec {
            problems.push(format!(
                "artifact {}: evidence says {} bytes sha256 {}, the event says {} at {} bytes sha256 {}",
                rec.path, rec.size_bytes, rec.sha256, ev.path, ev.size_bytes, ev.sha256
            ));
        }
    }
    problems
}

/// Re-reads an artifact's bytes (the stored blob, or fetched from the server) and compares
/// size and digest.
async fn rehash(conn: &Connection, a: &EvidenceArtifact) -> Result<(), String> {
    let reader = conn
        .artifact_readers(&a.artifact_id, &a.sha256, 1)
        .await
        .and_then(|mut r| {
            r.pop()
                .ok_or_else(|| Error::io("artifact", std::io::Error::other("no reader")))
        })
        .map_err(|e| {
            format!(
                "artifact {}: blob {} cannot be read: {}",
                a.path,
                a.sha256,
                e.chain()
            )
        })?;
    let expected = a.clone();
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("artifact {}: reading its blob: {e}", expected.path)),
            }
        }
        let got = Sha256Digest::from_bytes(&hasher.finalize().into());
        if got != expected.sha256 || size != expected.size_bytes {
            return Err(format!(
                "artifact {}: stored blob has {size} bytes sha256 {got}, evidence says {} bytes sha256 {}",
                expected.path, expected.size_bytes, expected.sha256
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("artifact {}: {e}", a.path))?
}
