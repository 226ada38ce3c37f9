//! `crownest verify`: proves that a run's record is intact.
//!
//! Both modes check, from the Evidence Bundle and the full event list, under the rules of
//! the bundle's schema (`crownest_core::evidence::verify`, format in `docs/evidence.md`):
//!
//! 1. the hash chain: seqs gap-free from 1, every hash recomputed, `terminal` last, count and
//!    head equal to what the bundle recorded, and the last event equal to the bundle's
//!    terminal event (so no event was dropped, reordered, duplicated or edited);
//! 2. the bundle against the chain: for `crownest.evidence/v2`, every field equals what the
//!    events say (each difference is printed with the field's name) and the terminal event's
//!    `bundleDigest` is the bundle's; for the older v1 and v1.1, the fields those layouts
//!    bound (outcome, artifact list);
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
//! Exit 0 when everything holds, 1 on any mismatch (each is printed on stderr), 2 when the
//! run or a file does not exist or a file is not an evidence bundle at all.

use std::io::{BufRead as _, Read as _};
use std::path::Path;

use anyhow::Context as _;
use crownest_core::evidence::EvidenceArtifact;
use crownest_core::signing::DsseEnvelope;
use crownest_core::{Error, Event, EvidenceBundle, Sha256Digest};
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
    let (raw, bundle, events, problems_so_far, conn) =
        match (&args.run, &args.evidence, &args.events) {
            (Some(run), _, _) => {
                let id = run_id(run)?;
                let conn = target.open().await?;
                conn.get(&id).await?;
                let bundle = conn.evidence(&id).await?;
                let raw = serde_json::to_value(&bundle)?;
                let events = conn.all_events(&id).await?;
                (raw, bundle, events, Vec::new(), Some(conn))
            }
            (None, Some(evidence), Some(events)) => {
                let (raw, bundle) = read_bundle(evidence)?;
                let (events, problems) = read_events(events)?;
                (raw, bundle, events, problems, None)
            }
            _ => return Err(usage("give a RUN, or --evidence FILE and --events FILE")),
        };
    let mut problems = problems_so_far;
    problems.extend(check(&raw, &events));
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
            "ok: run {} {}: {} events, chain head {}, {} artifact(s){}; {}",
            bundle.run_id,
            bundle.status,
            bundle.events.count,
            bundle.events.chain_head,
            bundle.artifacts.len(),
            if args.run.is_some() {
                format!(", {rehashed} blob(s) re-hashed")
            } else {
                String::new()
            },
            if bundle.is_v2() {
                format!("{}: every field bound to the chain", bundle.schema)
            } else {
                format!(
                    "{} rules: chain, outcome and artifacts bound; its other fields were not provable",
                    bundle.schema
                )
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

fn read_bundle(path: &Path) -> anyhow::Result<(serde_json::Value, EvidenceBundle)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{} is not JSON: {e}", path.display())))?;
    let bundle: EvidenceBundle = serde_json::from_value(raw.clone())
        .map_err(|e| usage(format!("{} is not an Evidence Bundle: {e}", path.display())))?;
    Ok((raw, bundle))
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
        let raw: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{} line {}: not JSON: {e}", path.display(), i + 1));
                continue;
            }
        };
        match serde_json::from_value::<Event>(raw.clone()) {
            // The hash is recomputed from the typed event: a line must be exactly that
            // event (no extra member, no other spelling of a value), or an edit could hide
            // in what the typed form drops.
            Ok(ev) if serde_json::to_value(&ev).ok().as_ref() == Some(&raw) => events.push(ev),
            Ok(ev) => {
                problems.push(format!(
                    "{} line {}: event seq {} has members or values that are not its canonical form",
                    path.display(),
                    i + 1,
                    ev.seq
                ));
                events.push(ev);
            }
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
pub(crate) fn check(bundle: &serde_json::Value, events: &[Event]) -> Vec<String> {
    crownest_core::evidence::verify(bundle, events)
        .into_iter()
        .map(|p| p.to_string())
        .collect()
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
