//! Staged transfers: chunks in any order, conflicts, listing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Error;
use crate::ids::{RunId, Sha256Digest, TransferId};
use crate::run::ArchiveDescriptor;
use crate::store::{Store, TransferRecord};
use crate::time::Timestamp;

use super::*;

/// Transfers: chunks in any order, idempotent; `open_transfer` concatenates in order.
pub async fn transfer_chunks_any_order_idempotent(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(&data),
        },
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    let chunk =
        |i: usize| Bytes::copy_from_slice(&data[i * 1000..((i + 1) * 1000).min(data.len())]);
    store.put_chunk(&t.transfer_id, 2, chunk(2)).await.unwrap();
    assert!(
        store.open_transfer(&t.transfer_id).await.is_err(),
        "incomplete transfer cannot be opened"
    );
    store.put_chunk(&t.transfer_id, 0, chunk(0)).await.unwrap();
    store.put_chunk(&t.transfer_id, 0, chunk(0)).await.unwrap();
    let status = store.get_transfer(&t.transfer_id).await.unwrap();
    assert_eq!(status.received, BTreeSet::from([0, 2]));
    assert_eq!(status.missing_ranges(), vec![(1000, 2000)]);
    let done = store.put_chunk(&t.transfer_id, 1, chunk(1)).await.unwrap();
    assert!(done.is_complete());
    let mut back = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_transfer(&t.transfer_id).await.unwrap(),
        &mut back,
    )
    .unwrap();
    assert_eq!(back, data);
    store.delete_transfer(&t.transfer_id).await.unwrap();
    assert!(matches!(
        store.get_transfer(&t.transfer_id).await,
        Err(Error::NotFound { .. })
    ));
}

/// `put_chunk` of a chunk already received with other bytes is `ChunkRejected` (conflict)
/// and leaves the stored chunk as it was; the same bytes again are accepted.
pub async fn transfer_chunk_conflict_keeps_the_stored_chunk(store: Arc<dyn Store>) {
    let run = created(&store, None).await;
    let data: Vec<u8> = (0..2000u32).map(|i| (i % 241) as u8).collect();
    let t = TransferRecord {
        transfer_id: TransferId::new(),
        run_id: run.id.clone(),
        descriptor: ArchiveDescriptor {
            size_bytes: data.len() as u64,
            sha256: Sha256Digest::of(&data),
        },
        chunk_size_bytes: 1000,
        received: BTreeSet::new(),
        created_at: Timestamp::now(),
    };
    store.create_transfer(&t).await.unwrap();
    let first = Bytes::copy_from_slice(&data[1000..]);
    store
        .put_chunk(&t.transfer_id, 1, first.clone())
        .await
        .unwrap();
    let mut other = first.to_vec();
    other[500] ^= 0xff;
    let err = store
        .put_chunk(&t.transfer_id, 1, Bytes::from(other))
        .await
        .unwrap_err();
    match &err {
        Error::ChunkRejected { offset, reason, .. } => {
            assert_eq!(*offset, 1000, "the offset of the chunk");
            assert_eq!(*reason, crate::error::ChunkRejectReason::Conflict);
        }
        e => panic!("other bytes for a stored chunk must be a conflict, got {e:?}"),
    }
    // The same bytes again are fine, and what is stored is the first chunk.
    store.put_chunk(&t.transfer_id, 1, first).await.unwrap();
    store
        .put_chunk(&t.transfer_id, 0, Bytes::copy_from_slice(&data[..1000]))
        .await
        .unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_transfer(&t.transfer_id).await.unwrap(),
        &mut back,
    )
    .unwrap();
    assert_eq!(back, data, "the conflicting chunk changed nothing");
}

/// `list_transfers` lists every stored transfer, or one run's, and not deleted ones.
pub async fn list_transfers_by_run(store: Arc<dyn Store>) {
    let a = created(&store, None).await;
    let b = created(&store, None).await;
    let ta = transfer_for(&a.id, &[1; 1500]);
    let tb1 = transfer_for(&b.id, &[2; 10]);
    let tb2 = transfer_for(&b.id, &[3; 10]);
    for t in [&ta, &tb1, &tb2] {
        store.create_transfer(t).await.unwrap();
    }
    store
        .put_chunk(&ta.transfer_id, 0, Bytes::from(vec![1; 1000]))
        .await
        .unwrap();
    let ids = |ts: Vec<TransferRecord>| -> BTreeSet<TransferId> {
        ts.into_iter().map(|t| t.transfer_id).collect()
    };
    let all = store.list_transfers(None).await.unwrap();
    let listed_a = all
        .iter()
        .find(|t| t.transfer_id == ta.transfer_id)
        .unwrap();
    assert_eq!(
        listed_a.received,
        BTreeSet::from([0]),
        "listed with its chunks"
    );
    assert_eq!(
        listed_a.descriptor, ta.descriptor,
        "listed with its descriptor"
    );
    assert_eq!(
        ids(all),
        BTreeSet::from([
            ta.transfer_id.clone(),
            tb1.transfer_id.clone(),
            tb2.transfer_id.clone()
        ])
    );
    assert_eq!(
        ids(store.list_transfers(Some(&b.id)).await.unwrap()),
        BTreeSet::from([tb1.transfer_id.clone(), tb2.transfer_id.clone()])
    );
    store.delete_transfer(&tb1.transfer_id).await.unwrap();
    assert_eq!(
        ids(store.list_transfers(Some(&b.id)).await.unwrap()),
        BTreeSet::from([tb2.transfer_id.clone()]),
        "a deleted transfer is not listed"
    );
    assert!(
        store
            .list_transfers(Some(&RunId::new()))
            .await
            .unwrap()
            .is_empty()
    );
}
