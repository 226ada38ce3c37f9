//! Store conformance: one function per bullet of the [`Store`] contract, by area (`runs.rs`,
//! `commits.rs`, `blobs.rs`, `transfers.rs`); the shared helpers are here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;

use crate::event::{EventKind, NewEvent, OutputChunk};
use crate::evidence::EvidenceBundle;
use crate::ids::{RunId, Sha256Digest, TransferId};
use crate::run::{ArchiveDescriptor, RunOwner, RunRecord};
use crate::spec::{Limits, RunSpec};
use crate::status::RunStatus;
use crate::store::{BlobExpect, ByteStream, RunCommit, Store, TransferRecord};
use crate::time::Timestamp;

mod blobs;
mod commits;
mod runs;
mod transfers;
mod usage;

pub use blobs::*;
pub use commits::*;
pub use runs::*;
pub use transfers::*;
pub use usage::*;

fn new_run(key: Option<&str>) -> RunRecord {
    let mut spec = RunSpec::new(["true"]);
    spec.idempotency_key = key.map(str::to_owned);
    RunRecord::new(
        RunId::new(),
        spec,
        "fake".into(),
        Limits::default(),
        RunOwner::current("conformance"),
    )
}

fn out(text: &str) -> NewEvent {
    NewEvent::now(EventKind::Stdout(OutputChunk {
        offset: 0,
        data: Some(text.into()),
        data_base64: None,
    }))
}

fn stream_of(data: &[u8]) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn created(store: &Arc<dyn Store>, key: Option<&str>) -> RunRecord {
    store
        .create_run(new_run(key))
        .await
        .expect("create_run")
        .into_run()
}

/// Commits `n` stdout events; returns the record after.
async fn append(store: &Arc<dyn Store>, run: &RunRecord, n: usize) -> RunRecord {
    let events = (0..n).map(|i| out(&format!("line {i}"))).collect();
    let stored = store.get_run(&run.id).await.unwrap();
    store
        .commit(
            &run.id,
            RunCommit {
                expected_next_seq: stored.next_seq,
                events,
                record: None,
                evidence: None,
                envelope: None,
            },
        )
        .await
        .expect("commit");
    store.get_run(&run.id).await.unwrap()
}

/// Builds the terminal commit exactly as the engine does.
fn terminal_commit(stored: &RunRecord) -> RunCommit {
    let mut record = stored.clone();
    record.status = RunStatus::Succeeded;
    record.exit_code = Some(0);
    record.timestamps.terminal = Some(Timestamp::now());
    let terminal = NewEvent::now(EventKind::Terminal {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        failure: None,
        duration_ms: 1,
        output: None,
        sandbox: None,
        crownest_version: None,
        bundle_digest: None,
    });
    let sealed = crate::event::seal(
        &stored.chain_head,
        &stored.id,
        stored.next_seq,
        terminal.clone(),
    );
    let evidence = EvidenceBundle::build(&record, None, None, None, sealed);
    RunCommit {
        expected_next_seq: stored.next_seq,
        events: vec![terminal],
        record: Some(record),
        evidence: Some(evidence),
        envelope: None,
    }
}

fn any_blob() -> BlobExpect<'static> {
    BlobExpect {
        descriptor: None,
        max_bytes: 1 << 20,
    }
}

fn transfer_for(run: &RunId, data: &[u8]) -> TransferRecord {
    TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(data),
        },
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    }
}
