//! The v2 bundle as a pure function of the event chain: what a verifier recomputes.
//!
//! | bundle field | from |
//! |---|---|
//! | `runId`, `command`, `cwd`, `env`, `secretNames`, `template.name`, `template.backend`, `limits`, `network`, `artifactsRequested`, `keepSandbox`, `source.labels` | the `spec` event (seq 1) |
//! | `source.sizeBytes`, `source.sha256`, `source.upload` | the `archive_verified` event |
//! | `template.identity`, `isolation` | the last `environment` event |
//! | `artifacts`, `artifactErrors` | the `artifact_collected` / `artifact_error` events, in order |
//! | `timestamps.created` / `archiveVerified` / `started` / `commandStarted` / `commandEnded` / `terminal` | `at` of the `spec` event / the `archive_verified` event / the first `status: queued` / the first `status: running` / the first `status: finalizing` after `running` / the terminal event |
//! | `status`, `exitCode`, `signal`, `failure`, `output`, `sandbox`, `crownestVersion` | the terminal event |
//! | `events` | the terminal event's seq and hash |
//! | `terminalEvent` | the terminal event |
//!
//! The terminal event's `output` is checked against the stored chunks too: each stream's
//! `storedBytes` must equal the bytes of its chunks (contiguous offsets from 0), and when
//! nothing was dropped its `sha256` must equal the digest of those bytes.

use sha2::{Digest as _, Sha256};

use super::{
    EVIDENCE_SCHEMA, EvidenceArtifact, EvidenceBundle, EvidenceSandbox, EvidenceSource,
    EvidenceTemplate, StreamSummary,
};
use crate::event::{ChainSummary, Event, EventKind, OutputStream};
use crate::run::{ArtifactErrorRecord, RunTimestamps};

/// Stored bytes of one stream, as the chunks carry them.
#[derive(Default)]
struct StreamTally {
    bytes: u64,
    hasher: Sha256,
    /// The first chunk whose offset was not the bytes before it.
    bad_offset: Option<u64>,
}

impl StreamTally {
    fn add(&mut self, seq: u64, offset: u64, bytes: &[u8]) {
        if offset != self.bytes && self.bad_offset.is_none() {
            self.bad_offset = Some(seq);
        }
        self.bytes += bytes.len() as u64;
        self.hasher.update(bytes);
    }

    /// Why the terminal event's summary of this stream is not what the chunks hold.
    fn check(self, name: &str, summary: &StreamSummary) -> Result<(), String> {
        if let Some(seq) = self.bad_offset {
            return Err(format!(
                "output.{name}: the chunk at seq {seq} does not start where the previous one ended"
            ));
        }
        if summary.stored_bytes != self.bytes {
            return Err(format!(
                "output.{name}.storedBytes: the terminal event says {}, the chunks hold {}",
                summary.stored_bytes, self.bytes
            ));
        }
        if summary
            .stored_bytes
            .checked_add(summary.dropped_bytes)
            .is_none_or(|sum| sum != summary.total_bytes)
        {
            return Err(format!(
                "output.{name}.totalBytes: {} is not stored {} + dropped {}",
                summary.total_bytes, summary.stored_bytes, summary.dropped_bytes
            ));
        }
        let digest = hex::encode(self.hasher.finalize());
        if summary.dropped_bytes == 0 && summary.sha256 != digest {
            return Err(format!(
                "output.{name}.sha256: the terminal event says {}, the chunks hash to {digest}",
                summary.sha256
            ));
        }
        Ok(())
    }
}

/// Recomputes the v2 Evidence Bundle of a run from its complete event list (seq 1 to the
/// terminal event). The chain itself is not checked here (see [`super::verify`]). Errors
/// say why the events cannot make a v2 bundle, or which output summary the chunks
/// contradict.
pub fn derive(events: &[Event]) -> Result<EvidenceBundle, String> {
    let first = events.first().ok_or("the run has no events")?;
    let EventKind::Spec { spec } = &first.kind else {
        return Err(format!(
            "the first event is a {} event, not spec: not an evidence v2 chain",
            first.kind.type_name()
        ));
    };
    let last = events.last().ok_or("the run has no events")?;
    let EventKind::Terminal {
        status,
        exit_code,
        signal,
        failure,
        output,
        sandbox,
        crownest_version,
        ..
    } = &last.kind
    else {
        return Err(format!(
            "the last event is a {} event: the run has not ended",
            last.kind.type_name()
        ));
    };
    let mut timestamps = RunTimestamps {
        created: Some(first.at),
        ..RunTimestamps::default()
    };
    let mut source = EvidenceSource {
        size_bytes: None,
        sha256: None,
        upload: None,
        labels: spec.labels.clone(),
    };
    let mut identity = None;
    let mut isolation = None;
    let mut artifacts = Vec::new();
    let mut artifact_errors = Vec::new();
    let mut tallies = [StreamTally::default(), StreamTally::default()];
    for e in &events[1..] {
        match &e.kind {
            EventKind::ArchiveVerified {
                size_bytes,
                sha256,
                upload,
            } => {
                source.size_bytes = Some(*size_bytes);
                source.sha256 = Some(sha256.clone());
                source.upload = Some(*upload);
                timestamps.archive_verified = Some(e.at);
            }
            // The same rule the engine records them by, at the status event's `at`.
            EventKind::Status { status, .. } => timestamps.on_status(*status, e.at),
            EventKind::Environment {
                identity: id,
                isolation: iso,
            } => {
                identity.clone_from(id);
                isolation = Some(iso.clone());
            }
            kind @ EventKind::ArtifactCollected { .. } => {
                artifacts.extend(EvidenceArtifact::of_event(kind));
            }
            EventKind::ArtifactError {
                path,
                reason,
                message,
            } => artifact_errors.push(ArtifactErrorRecord {
                path: path.clone(),
                reason: *reason,
                message: message.clone(),
            }),
            EventKind::Stdout(chunk) => {
                tallies[0].add(e.seq, chunk.offset, &chunk.bytes());
            }
            EventKind::Stderr(chunk) => {
                tallies[1].add(e.seq, chunk.offset, &chunk.bytes());
            }
            _ => {}
        }
    }
    timestamps.terminal = Some(last.at);
    let sandbox: EvidenceSandbox = sandbox
        .clone()
        .ok_or("the terminal event has no sandbox summary")?;
    let crownest_version = crownest_version
        .clone()
        .ok_or("the terminal event has no crownestVersion")?;
    if let Some(out) = output {
        let [stdout, stderr] = tallies;
        stdout.check(OutputStream::Stdout.as_str(), &out.stdout)?;
        stderr.check(OutputStream::Stderr.as_str(), &out.stderr)?;
    }
    Ok(EvidenceBundle {
        schema: EVIDENCE_SCHEMA.into(),
        run_id: first.run_id.clone(),
        status: *status,
        exit_code: *exit_code,
        signal: *signal,
        failure: failure.clone(),
        command: spec.command.clone(),
        cwd: spec.cwd.clone(),
        env: spec.env.clone(),
        secret_names: spec.secret_names.clone(),
        env_names: None,
        env_salt: None,
        template: EvidenceTemplate {
            name: spec.template.clone(),
            backend: spec.backend.clone(),
            identity,
        },
        timestamps,
        source,
        artifacts,
        artifact_errors,
        limits: spec.limits,
        network: Some(spec.network),
        artifacts_requested: Some(spec.artifacts.clone()),
        keep_sandbox: spec.keep_sandbox,
        output: output.clone(),
        isolation,
        sandbox,
        events: ChainSummary {
            count: last.seq,
            chain_head: last.hash.clone(),
        },
        terminal_event: last.clone(),
        crownest_version,
    })
}
