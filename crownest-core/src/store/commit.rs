//! The commit rule every store applies, pure: [`prepare_commit`] checks a [`RunCommit`]
//! against the stored record ([`check_commit`]), seals its events onto the stored chain
//! ([`crate::event::seal_all`]), checks the evidence names the sealed terminal event
//! ([`check_sealed_evidence`]) and computes the record to store. A store reads the stored
//! record inside its transaction, calls [`prepare_commit`], and writes what it returns; so
//! [`crate::MemoryStore`], the SQLite store and the PostgreSQL store cannot disagree on it.
//! [`check_blob_expectations`] is the same for a finished blob.

use crate::error::{Error, Result};
use crate::event::{Event, seal_all};
use crate::evidence::EvidenceBundle;
use crate::ids::RunId;
use crate::run::RunRecord;
use crate::signing::DsseEnvelope;

use super::{BlobExpect, BlobInfo, RunCommit};

/// A commit checked and sealed against the stored record: exactly what a store writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedCommit {
    /// The sealed events (gap-free seqs from the stored `next_seq`, chained from the
    /// stored head), to append and to return from `commit`.
    pub events: Vec<Event>,
    /// The record to store: the commit's record (or the stored one), with `id`,
    /// `cancel_requested` (never changed by a commit), `next_seq` and `chain_head` set.
    pub record: RunRecord,
    /// The evidence to store (only with `terminal`).
    pub evidence: Option<EvidenceBundle>,
    /// Its signed envelope, if any (only with `evidence`).
    pub envelope: Option<DsseEnvelope>,
}

/// The commit rule: `stored` is the run's record as the store holds it, read in the same
/// transaction the result is written in. `Error::Conflict` (nothing to write) when the
/// commit does not fit the stored run.
pub fn prepare_commit(id: &RunId, stored: &RunRecord, commit: RunCommit) -> Result<PreparedCommit> {
    check_commit(stored, &commit)?;
    let sealed = seal_all(&stored.chain_head, id, stored.next_seq, commit.events);
    check_sealed_evidence(&sealed, commit.evidence.as_ref())?;
    let mut record = commit.record.unwrap_or_else(|| stored.clone());
    record.id = id.clone();
    record.cancel_requested = stored.cancel_requested;
    record.next_seq = stored.next_seq + sealed.len() as u64;
    record.chain_head = sealed
        .last()
        .map(|e| e.hash.clone())
        .unwrap_or_else(|| stored.chain_head.clone());
    Ok(PreparedCommit {
        events: sealed,
        record,
        evidence: commit.evidence,
        envelope: commit.envelope,
    })
}

/// The checks every store applies to a commit before writing, given the stored record.
/// Pure, so every implementation enforces the same rules.
pub fn check_commit(stored: &RunRecord, commit: &RunCommit) -> Result<()> {
    if commit.expected_next_seq != stored.next_seq {
        return Err(Error::Conflict {
            message: format!(
                "run {}: expected next seq {}, store has {}",
                stored.id, commit.expected_next_seq, stored.next_seq
            ),
        });
    }
    crate::event::check_append(
        stored.status.is_terminal() && stored.next_seq > 1,
        &commit.events,
    )?;
    let ends_terminal = commit.events.last().is_some_and(|e| e.kind.is_terminal());
    if commit.envelope.is_some() && commit.evidence.is_none() {
        return Err(Error::Conflict {
            message: "a signed envelope may only be stored with its evidence".into(),
        });
    }
    match (&commit.evidence, ends_terminal) {
        (Some(_), false) => Err(Error::Conflict {
            message: "evidence may only be stored with the terminal event".into(),
        }),
        (None, true) => Err(Error::Conflict {
            message: "the terminal event must come with its evidence".into(),
        }),
        _ => {
            if ends_terminal
                && !commit
                    .record
                    .as_ref()
                    .is_some_and(|r| r.status.is_terminal())
            {
                return Err(Error::Conflict {
                    message: "the terminal event must come with a terminal record".into(),
                });
            }
            Ok(())
        }
    }
}

/// After sealing: the evidence must name exactly the sealed terminal event.
pub fn check_sealed_evidence(sealed: &[Event], evidence: Option<&EvidenceBundle>) -> Result<()> {
    if let (Some(ev), Some(last)) = (evidence, sealed.last())
        && ev.terminal_event != *last
    {
        return Err(Error::Conflict {
            message: format!(
                "evidence names terminal event seq {} hash {}, sealed seq {} hash {}",
                ev.terminal_event.seq, ev.terminal_event.hash, last.seq, last.hash
            ),
        });
    }
    Ok(())
}

/// Compares a finished blob with the declared descriptor (size, then digest).
pub fn check_blob_expectations(info: &BlobInfo, expect: BlobExpect<'_>) -> Result<()> {
    match expect.descriptor {
        Some(d) => d.check(info.size_bytes, &info.sha256),
        None => Ok(()),
    }
}
