//! The hash chain: `hash = sha256(previous hash ‖ canonical JSON of the event without
//! "hash")`. [`seal`] is the only place an event gets its seq and hash; [`verify_chain`]
//! checks a chain offline; [`check_append`] is the rule that nothing follows `terminal`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::ids::RunId;
use crate::time::Timestamp;

use super::{Event, EventKind, GENESIS_HASH, NewEvent};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Unsealed<'a> {
    run_id: &'a RunId,
    seq: u64,
    at: Timestamp,
    #[serde(flatten)]
    kind: &'a EventKind,
}

/// Canonical JSON (RFC 8785, see [`crate::canonical`]): what every hash is taken over.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    crate::canonical::to_vec(value)
}

/// An `io::Write` that feeds a sha256 (behind a `BufWriter`, so that the many small writes
/// of escaped strings reach the hasher in large blocks).
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn chain_hash(
    prev_hash: &str,
    run_id: &RunId,
    seq: u64,
    at: Timestamp,
    kind: &EventKind,
) -> String {
    let unsealed = Unsealed {
        run_id,
        seq,
        at,
        kind,
    };
    let value = serde_json::to_value(&unsealed).unwrap_or(Value::Null);
    let prev = hex::decode(prev_hash).unwrap_or_else(|_| vec![0; 32]);
    let mut h = Sha256::new();
    h.update(&prev);
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, HashWriter(h));
    // Writing into the hasher cannot fail.
    let _ = crate::canonical::write(&value, &mut w);
    let _ = std::io::Write::flush(&mut w);
    let (HashWriter(h), _) = w.into_parts();
    hex::encode(h.finalize())
}

/// Gives `event` its seq and chain hash. Stores call this inside the append transaction,
/// with the run's current chain head (or [`GENESIS_HASH`] for seq 1).
pub fn seal(prev_hash: &str, run_id: &RunId, seq: u64, event: NewEvent) -> Event {
    let hash = chain_hash(prev_hash, run_id, seq, event.at, &event.kind);
    Event {
        run_id: run_id.clone(),
        seq,
        at: event.at,
        kind: event.kind,
        hash,
    }
}

/// Seals a batch after a chain head, returning the sealed events (seq from `first_seq`).
pub fn seal_all(
    prev_hash: &str,
    run_id: &RunId,
    first_seq: u64,
    events: Vec<NewEvent>,
) -> Vec<Event> {
    let mut prev = prev_hash.to_owned();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let sealed = seal(&prev, run_id, first_seq + i as u64, e);
        prev.clone_from(&sealed.hash);
        out.push(sealed);
    }
    out
}

/// What [`verify_chain`] proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChainSummary {
    /// Number of events.
    pub count: u64,
    /// Hash of the last event ([`GENESIS_HASH`] when empty).
    pub chain_head: String,
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// seq is not the next one (dropped, reordered or duplicated event).
    #[error("event at position {index} has seq {found}, expected {expected}")]
    SeqGap {
        /// Position in the list.
        index: usize,
        /// Expected seq.
        expected: u64,
        /// Found seq.
        found: u64,
    },
    /// The event's hash does not match its content and predecessor (edited event).
    #[error("event seq {seq} has hash {found}, expected {expected}")]
    HashMismatch {
        /// seq.
        seq: u64,
        /// Recomputed hash.
        expected: String,
        /// Stored hash.
        found: String,
    },
    /// An event of another run.
    #[error("event seq {seq} belongs to run {found}, expected {expected}")]
    WrongRun {
        /// seq.
        seq: u64,
        /// Expected run id.
        expected: String,
        /// Found run id.
        found: String,
    },
    /// Events after `terminal`, or `terminal` not last.
    #[error("terminal event at seq {seq} is not the last event")]
    TerminalNotLast {
        /// seq of the terminal event.
        seq: u64,
    },
    /// The count or head differs from what the evidence recorded.
    #[error(
        "chain has {count} events with head {head}, evidence records {expected_count} with head {expected_head}"
    )]
    HeadMismatch {
        /// Events verified.
        count: u64,
        /// Head found.
        head: String,
        /// Count recorded.
        expected_count: u64,
        /// Head recorded.
        expected_head: String,
    },
}

/// Verifies a complete event list of one run (seq from 1): seq gap-free, every hash
/// recomputed, `terminal` (if any) last. Returns count and chain head.
pub fn verify_chain(
    run_id: &RunId,
    events: &[Event],
) -> std::result::Result<ChainSummary, ChainError> {
    let mut prev = GENESIS_HASH.to_owned();
    for (index, e) in events.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        if e.run_id != *run_id {
            return Err(ChainError::WrongRun {
                seq: e.seq,
                expected: run_id.to_string(),
                found: e.run_id.to_string(),
            });
        }
        if e.seq != expected_seq {
            return Err(ChainError::SeqGap {
                index,
                expected: expected_seq,
                found: e.seq,
            });
        }
        let expected = chain_hash(&prev, &e.run_id, e.seq, e.at, &e.kind);
        if expected != e.hash {
            return Err(ChainError::HashMismatch {
                seq: e.seq,
                expected,
                found: e.hash.clone(),
            });
        }
        if e.kind.is_terminal() && index + 1 != events.len() {
            return Err(ChainError::TerminalNotLast { seq: e.seq });
        }
        prev.clone_from(&e.hash);
    }
    Ok(ChainSummary {
        count: events.len() as u64,
        chain_head: prev,
    })
}

/// Verifies a chain and checks it against what an Evidence Bundle recorded.
pub fn verify_against(
    run_id: &RunId,
    events: &[Event],
    expected: &ChainSummary,
) -> std::result::Result<ChainSummary, ChainError> {
    let got = verify_chain(run_id, events)?;
    if got != *expected {
        return Err(ChainError::HeadMismatch {
            count: got.count,
            head: got.chain_head,
            expected_count: expected.count,
            expected_head: expected.chain_head.clone(),
        });
    }
    Ok(got)
}

impl From<ChainError> for Error {
    fn from(e: ChainError) -> Self {
        Error::Conflict {
            message: format!("event chain does not verify: {e}"),
        }
    }
}

/// Checks the append-time invariants a store must enforce for one batch: nothing after a
/// `terminal` already in the log, at most one `terminal` and only as the batch's last event.
pub fn check_append(already_terminal: bool, events: &[NewEvent]) -> Result<()> {
    if already_terminal && !events.is_empty() {
        return Err(Error::Conflict {
            message: "run already has its terminal event".into(),
        });
    }
    if let Some(pos) = events.iter().position(|e| e.kind.is_terminal())
        && pos + 1 != events.len()
    {
        return Err(Error::Conflict {
            message: "terminal event must be the last event".into(),
        });
    }
    Ok(())
}
